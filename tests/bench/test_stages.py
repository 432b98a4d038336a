"""bench/clock_python.sh and bench/stages.py: each command the scripts run is clocked and tabulated."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="needs GNU time")
def test_clocked_commands_become_table_rows(tmp_path):
    clock = tmp_path / "stages.jsonl"
    env = {**os.environ, "STAGE_CLOCK": str(clock), "CLOCKED_PYTHON": sys.executable}
    wrapper = str(ROOT / "bench" / "clock_python.sh")
    ok = subprocess.run([wrapper, "-m", "json.tool", "--help"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "usage" in ok.stdout  # the command's own output passes through
    big = subprocess.run([wrapper, "-c", "import numpy; x = numpy.ones(20_000_000); print('done \"quoted\"')"],
                         env=env, capture_output=True, text=True)
    failed = subprocess.run([wrapper, "-m", "maml.test", "--shots", "5", "--run", str(tmp_path / "none")], env=env,
                            capture_output=True, text=True)
    assert big.returncode == 0 and failed.returncode == 2  # the exit status is the command's

    r = subprocess.run([sys.executable, str(ROOT / "bench" / "stages.py"), str(clock)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rows = [line.split(" | ") for line in r.stdout.splitlines()[2:]]
    assert [row[0].lstrip("| ") for row in rows] == ["json.tool", "-c import", "maml.test (5-shot)",
                                                     "**all**"]
    assert [row[3].rstrip(" |") for row in rows[:3]] == ["0", "0", "2"]
    assert int(rows[1][2]) >= 152  # 20 million float64 ones: 153 MiB


def test_a_file_that_is_not_a_clock_is_one_line(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"seconds": 1}\n')
    for path, message in ((bad, "line 1 is not a bench/clock_python.sh record"), (tmp_path / "no", "no such file")):
        r = subprocess.run([sys.executable, str(ROOT / "bench" / "stages.py"), str(path)], capture_output=True,
                           text=True, cwd=ROOT)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
