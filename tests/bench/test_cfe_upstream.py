"""bench/cfe_upstream.py: our CFE step and upstream's PIL + DataLoader step timed side by side."""

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fewshot.errors import cli_main

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cfe_upstream.py"


def run(*args):
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=BENCH.parents[1])


@pytest.fixture(scope="module")
def bench():
    """The script as a module (imported once: torch and torchvision take seconds to load here)."""
    spec = importlib.util.spec_from_file_location("cfe_upstream", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, message", [
    (["--workers", "-1"], "argument --workers: invalid nonneg_int value: '-1'"),
    (["--steps", "0"], "argument --steps: invalid positive_int value: '0'"),
])
def test_bad_settings_give_one_line_and_exit_2(args, message):
    r = run(*args)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()  # ours is one line; argparse's usage error ends with its own
    assert "Traceback" not in r.stderr and message in lines[-1]
    assert (len(lines) == 1 and lines[0].startswith("error: ")) or lines[0].startswith("usage:")


def test_a_bank_smaller_than_a_batch_is_one_error_line(bench, capsys):
    """drop_last would leave upstream's loader without a batch: refused up front (in-process, through cli_main as
    the script runs its main, to spare a third interpreter start)."""
    with pytest.raises(SystemExit) as e:
        cli_main(bench.main, ["--images", "16", "--batch-size", "32"])
    captured = capsys.readouterr()
    assert e.value.code == 2 and captured.out == ""
    assert captured.err == "error: --images 16 must be at least --batch-size 32\n"


def test_both_methods_are_timed_and_compared():
    r = run("--steps", "2", "--batch-size", "32", "--images", "256", "--workers", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    ours, upstream = out["methods"]
    assert (ours["method"], upstream["method"]) == ("ours", "upstream")
    for row in (ours, upstream):
        assert 0 < row["step_seconds_min"] <= row["step_seconds_median"]
        assert row["images_per_s"] == pytest.approx(32 / row["step_seconds_median"], rel=0.01)
    assert upstream["batch_wait_seconds_median"] >= 0
    assert out["ratio_upstream_to_ours"] == pytest.approx(
        upstream["step_seconds_median"] / ours["step_seconds_median"], rel=0.01)
    assert (out["batch_size"], out["images"], out["steps"], out["workers"], out["threads"]) == (32, 256, 2, 1, 1)
    assert out["torch"] and out["torchvision"] and out["machine"] and out["device"] == "cpu"


def test_upstream_dataset_gives_two_different_views_in_0_1(bench):
    """Item i is upstream's TwoCropsTransform of image i: two 1x28x28 float views in [0, 1], each its own draw."""
    random.seed(0)  # the blur's sigma and RandomApply's coin
    torch.manual_seed(0)  # RandomResizedCrop's boxes
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8).numpy()
    dataset = bench.TwoViews(images)
    assert len(dataset) == 4
    q, k = dataset[1]
    for view in (q, k):
        assert view.shape == (1, 28, 28) and view.dtype == torch.float32
        assert 0 <= view.min() and view.max() <= 1
    assert not torch.equal(q, k)
