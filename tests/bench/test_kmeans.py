"""bench/kmeans.py: our k-means against scikit-learn's, timed and scored by one objective; bad inputs refused."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kmeans.py"


def run(*args):
    return subprocess.run([sys.executable, str(BENCH), "--threads", "1", *args], capture_output=True, text=True,
                          cwd=BENCH.parents[1])


def test_objective_by_hand():
    """Four points, two centres: squared distances 1, 1, 2 (to (1, 0), not 4 to (0, 3)) and 9 (not 13)."""
    objective = runpy.run_path(str(BENCH))["objective"]
    Z = np.array([[0, 0], [2, 0], [0, 1], [3, 3]], np.float32)
    centres = np.array([[1, 0], [0, 3]], np.float32)
    assert objective(Z, centres) == 13.0
    assert objective(Z, centres, batch=3) == 13.0  # the same over batches of rows
    assert objective(Z, Z) == 0.0


def test_every_method_is_timed_and_scored():
    """A tiny synthetic run, then 2x its points: a row per method and size, ratios to ours, and ours within a few
    percent of scikit-learn's objective on well-separated clusters (K over-clusters the 20 true ones: at K = 20
    one random-init run can join two clusters and split another, which k-means++ with 10 restarts avoids)."""
    r = run("--points", "2000", "--dim", "16", "--true-clusters", "20", "--clusters", "40", "--repeats", "1",
            "--repeat-points", "1", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    rows = out["rows"]
    assert [(row["method"], row["points"]) for row in rows] == \
        [(m, n) for n in (2000, 4000) for m in ("ours", "sklearn-upstream", "sklearn-matched")]
    for row in rows:
        assert row["dim"] == 16 and row["clusters"] == 40 and row["iterations"] >= 1
        assert row["objective"] > 0 and row["seconds_median"] > 0 and row["seconds_min"] <= row["seconds_median"]
        assert abs(row["objective_rel_to_ours"]) < 0.05  # each sklearn within 5% of ours (1-2% seen)
    ours = [row for row in rows if row["method"] == "ours"]
    assert all(row["time_ratio_to_ours"] == 1.0 and row["objective_rel_to_ours"] == 0 for row in ours)
    assert out["niter"] == 100  # cfe.encode's default
    assert all(1 <= row["iterations"] <= 100 for row in ours)  # faiss stops early once its objective stays put
    assert [g["repeat_points"] for g in out["goal"]] == [1, 2] and out["threads"] == 1
    assert out["inputs"]["points"] == 2000 and {"torch", "faiss", "sklearn", "machine"} <= set(out)


@pytest.mark.parametrize("args, message", [
    (["--clusters", "0"], "argument --clusters: invalid positive_int value: '0'"),
    (["--methods", "faiss"], "argument --methods: invalid choice: 'faiss'"),
    (["--checkpoint", "cfe.pt"], "--checkpoint and --data go together"),
    (["--data", "x.npz"], "--checkpoint and --data go together"),
    (["--checkpoint", "cfe.pt", "--data", "x.npz", "--points", "10"], "--points: synthetic data's settings"),
    (["--points", "50", "--clusters", "60"], "--clusters 60 is more than the 50 points"),
])
def test_bad_inputs_give_one_line_and_exit_2(args, message):
    r = run(*args)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()  # ours is one line; argparse's usage error ends with its own
    assert "Traceback" not in r.stderr and message in lines[-1]
    assert (len(lines) == 1 and lines[0].startswith("error: ")) or lines[0].startswith("usage:")
