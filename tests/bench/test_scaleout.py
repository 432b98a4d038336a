"""bench/scaleout.py: one process against a 2-process torchrun launch of cfe.train, on tiny data."""

import json
import subprocess
import sys
from pathlib import Path

from fewshot.io import save_npz
from tests.conftest import synthetic_images

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scaleout.py"


def test_both_launches_are_timed_and_compared(tmp_path):
    save_npz(tmp_path / "x.npz", X=synthetic_images(8, 8)[0])
    r = subprocess.run([sys.executable, str(BENCH), "--data", str(tmp_path / "x.npz"), "--procs", "2",
                        "--threads", "2", "--epochs", "1", "--repeats", "1", "--train-args",
                        "--batch-size 16 --queue-size 32 --hidden 8 --dim 8 --bn-splits 2"],
                       capture_output=True, text=True, cwd=BENCH.parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert set(out["images_per_s"]) == {"1 process", "2 processes"} and all(out["images_per_s"].values())
    assert out["ratio"] > 0 and len(out["all_images_per_s"]["2"]) == 1
