"""bench/cfe_step.py: settings the CFE step cannot run are refused up front, as cfe.train refuses them."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cfe_step.py"


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--bn-splits", "1", "3"], "--bn-splits 3 must be >= 1 and divide --batch-size 256"),
    (["--queue-size", "100"], "--batch-size 256 must not exceed --queue-size 100"),
])
def test_bad_settings_give_one_line_and_exit_2(args, message):
    r = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=BENCH.parents[1])
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
