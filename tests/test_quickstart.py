"""scripts/quickstart.sh at a tiny budget: every stage runs on the glyphs, and the table shows the pipeline beside
the raw-pixel baseline with their paired difference on the same test tasks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fewshot.io import load_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_the_pipeline_beside_the_baseline(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "RUN_DIR": str(tmp_path / "run"), "DATA_DIR": str(tmp_path / "d"),
           "CFE_EPOCHS": "2", "MAML_EPOCHS": "1", "TEST_TASKS": "20", "TEST_STEPS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    pipeline = {s: load_json(run / "maml-pem" / "results" / f"test_5w{s}s.json") for s in (1, 5)}
    pixels = {s: load_json(run / "pixels" / "results" / f"test_5w{s}s.json") for s in (1, 5)}
    for s in (1, 5):
        assert pipeline[s]["tasks"] == pixels[s]["tasks"] == 20 and pipeline[s]["split"] == "test"
    assert "| maml-pem | MAML + PEM | test |" in r.stdout and "raw pixels, nearest prototype" in r.stdout
    for s in (1, 5):  # the same tasks of the test glyphs, so the two pair task by task
        assert pipeline[s]["tasks_sha256"] == pixels[s]["tasks_sha256"]
        assert f"- maml-pem - pixels, test 5-way {s}-shot:" in r.stdout
