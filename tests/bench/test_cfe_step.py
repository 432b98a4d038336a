"""bench/cfe_step.py: settings the CFE step cannot run are refused up front, as cfe.train refuses them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cfe_step.py"


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "argument --steps: invalid positive_int value: '0'"),
    (["--threads", "-1"], "argument --threads: invalid nonneg_int value: '-1'"),
    (["--bn-splits", "1", "3"], "--bn-splits 3 must be >= 1 and divide --batch-size 256"),
    (["--queue-size", "100"], "--batch-size 256 must not exceed --queue-size 100"),
    (["--crop", "torchvision"], "unrecognized arguments: --crop torchvision"),  # one way of cropping is left
    (["--channels", "2"], "argument --channels: invalid choice: 2"),  # cfe.train augments grey or RGB images
    (["--backbone", "conv4", "vgg16"], "argument --backbone: invalid choice: 'vgg16'"),
    (["--image-size", "8"], "--image-size: 8x8 images are too small for the 4-block network (at least 16x16)"),
    (["--device", "gpu"], "--device gpu: not a device name"),
    (["--device", "cuda:7"], "--device cuda:7: "),  # no CUDA here, or fewer than 8 GPUs
])
def test_bad_settings_give_one_line_and_exit_2(args, message):
    r = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=BENCH.parents[1])
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()  # ours is one line; argparse's usage error ends with its own
    assert "Traceback" not in r.stderr and message in lines[-1]
    assert (len(lines) == 1 and lines[0].startswith("error: ")) or lines[0].startswith("usage:")


def bench(*args) -> dict:
    """The bench's report, on one thread, its peak measured on a small matmul (seconds, not 10 s, on one core)."""
    r = subprocess.run([sys.executable, str(BENCH), "--threads", "1", "--peak-size", "512", *args],
                       capture_output=True, text=True, cwd=BENCH.parents[1])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def check_rows(rows, batch_size):
    """Every row timed, counted and compared: images/s is the batch over the median step, the first row's ratio 1."""
    assert rows[0]["ratio_to_first"] == 1.0
    for row in rows:
        assert row["step_seconds_median"] > 0 and row["step_gflop"] > 0 and row["share_of_matmul_peak"] > 0
        assert row["images_per_s"] == pytest.approx(batch_size / row["step_seconds_median"], rel=0.01)


def test_every_setting_is_measured_and_reported():
    """Each --queue-size x --bn-splits setting gets a row, in order, with a ratio to the first (1.0 for itself);
    the defaults are cfe.train's: Conv4 on 28x28 grey images."""
    out = bench("--steps", "1", "--batch-size", "32", "--queue-size", "64", "128", "--bn-splits", "1", "2")
    rows = out["settings"]
    assert [(row["backbone"], row["queue_size"], row["bn_splits"]) for row in rows] == \
        [("conv4", 64, 1), ("conv4", 64, 2), ("conv4", 128, 1), ("conv4", 128, 2)]
    assert (out["image_size"], out["channels"], out["batch_size"], out["matmul_size"]) == (28, 1, 32, 512)
    check_rows(rows, 32)


def test_backbones_on_colour_images_side_by_side():
    """The ImageNet-style step: 3-channel images (MoCo v2's colour views), each --backbone a row, interleaved with
    the other settings, torchvision's ResNet-18 among them."""
    out = bench("--steps", "2", "--batch-size", "8", "--image-size", "32", "--channels", "3",
                "--backbone", "conv4", "resnet18", "--queue-size", "16", "--bn-splits", "1", "2")
    rows = out["settings"]
    assert [(row["backbone"], row["queue_size"], row["bn_splits"]) for row in rows] == \
        [("conv4", 16, 1), ("conv4", 16, 2), ("resnet18", 16, 1), ("resnet18", 16, 2)]
    assert (out["image_size"], out["channels"], out["batch_size"], out["steps"]) == (32, 3, 8, 2)
    check_rows(rows, 8)
    conv4, resnet18 = rows[0], rows[2]
    assert resnet18["step_gflop"] > conv4["step_gflop"]  # a ResNet-18 step counts more FLOPs than a Conv4 one


def test_precisions_side_by_side_each_against_its_own_peak():
    """--precision fp32 bf16: a row each (the GPU fast path's autocast, runnable on CPU), each compared with the
    matmul peak of its own precision."""
    out = bench("--steps", "1", "--batch-size", "16", "--queue-size", "32", "--bn-splits", "2",
                "--precision", "fp32", "bf16")
    rows = out["settings"]
    assert [row["precision"] for row in rows] == ["fp32", "bf16"] and out["compile"] is False
    assert set(out["matmul_gflops_per_s"]) == {"fp32", "bf16"}
    check_rows(rows, 16)
