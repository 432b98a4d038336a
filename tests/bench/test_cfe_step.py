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
    (["--device", "gpu"], "--device gpu: not a device name"),
    (["--device", "cuda:7"], "--device cuda:7: "),  # no CUDA here, or fewer than 8 GPUs
])
def test_bad_settings_give_one_line_and_exit_2(args, message):
    r = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=BENCH.parents[1])
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()  # ours is one line; argparse's usage error ends with its own
    assert "Traceback" not in r.stderr and message in lines[-1]
    assert (len(lines) == 1 and lines[0].startswith("error: ")) or lines[0].startswith("usage:")


def test_every_setting_is_measured_and_reported():
    """Each --queue-size x --bn-splits setting gets a row, in order, with a ratio to the first (1.0 for itself)."""
    r = subprocess.run([sys.executable, str(BENCH), "--steps", "1", "--batch-size", "32", "--queue-size", "64", "128",
                        "--bn-splits", "1", "2", "--threads", "1"],
                       capture_output=True, text=True, cwd=BENCH.parents[1])
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["settings"]
    assert [(row["queue_size"], row["bn_splits"]) for row in rows] == [(64, 1), (64, 2), (128, 1), (128, 2)]
    assert rows[0]["ratio_to_first"] == 1.0
    assert all(row["step_seconds_median"] > 0 and row["step_gflop"] > 0 for row in rows)
