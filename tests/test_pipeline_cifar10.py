"""End-to-end smoke run of scripts/cifar10.sh, as a user types it, on a subset of the real CIFAR-10 JPEGs in their
real layout: data -> CFE (colour augmentation) -> encode -> MAML + PEM -> 5-way meta-test on the five unseen
classes, the raw-pixel baseline and the summary table. Skipped when the tarball is not available (set
CIFAR10_SOURCE to it)."""

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fewshot.checkpoint import load_checkpoint
from fewshot.io import load_json
from tests.datafiles import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
PER_CLASS = 16  # images kept of each class from each of CIFAR's train/ and test/ folders


def cifar_subset(source: Path, out: Path) -> Path:
    """The first PER_CLASS images of every class folder of the real tarball, in a tarball of the same layout."""
    kept = {}
    with tarfile.open(source) as src, tarfile.open(out, "w:gz") as dst:
        for m in src:
            folder = str(Path(m.name).parent)
            if m.isfile() and m.name.endswith(".jpg") and kept.get(folder, 0) < PER_CLASS:
                kept[folder] = kept.get(folder, 0) + 1
                dst.addfile(m, io.BytesIO(src.extractfile(m).read()))
    assert len(kept) == 20 and set(kept.values()) == {PER_CLASS}, kept
    return out


@pytest.mark.slow
def test_cifar10_script_on_a_subset(tmp_path):
    source = Path(os.environ.get("CIFAR10_SOURCE", "") or SHARED_DATA / "cifar10" / "cifar10-jpeg.tar.gz")
    if not source.exists():
        pytest.skip(f"{source} not found (set CIFAR10_SOURCE)")
    subset = cifar_subset(source, tmp_path / "cifar10-subset.tar.gz")
    run = tmp_path / "run"
    env = {**os.environ, "PYTHON": sys.executable, "CIFAR10_SOURCE": str(subset), "DATA_DIR": str(tmp_path / "data"),
           "RUN_DIR": str(run), "THREADS": "1", "DEVICE": "cpu", "CFE_EPOCHS": "1", "MAML_EPOCHS": "1",
           "CLUSTERS": "10", "TEST_STEPS": "1", "TEST_SHOTS": "1", "TEST_TASKS": "20",
           "CFE_ARGS": "--batch-size 32 --queue-size 64 --hidden 8",
           "MAML_ARGS": "--batches-per-epoch 2 --meta-batch 2 --hidden 8"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "cifar10.sh")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    prepared = load_json(tmp_path / "data" / "prepare.json")
    assert prepared["splits"] == {"train": {"images": 160, "classes": 5}, "test": {"images": 160, "classes": 5}}
    arch = load_checkpoint(run / "cfe" / "checkpoints" / "last.pt", "cfe")["arch"]
    assert (arch["image_size"], arch["in_channels"]) == (32, 3)
    encoded = load_json(run / "caches" / "encode.json")
    assert encoded["embedding_data"]["dataset"] == "cifar10" and encoded["quality_at_true_k"]["clusters"] == 5
    for result in (run / "maml-pem" / "results" / "test_5w1s.json", run / "pixels" / "results" / "test_5w1s.json"):
        res = load_json(result)
        assert res["tasks"] == 20 and 0 <= res["accuracy"] <= 1
    assert "maml-pem" in (run / "summary.md").read_text()
