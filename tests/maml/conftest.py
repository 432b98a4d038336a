"""Shared by the maml tests: encode.json for toy caches, a tiny trained MAML run whose caches (train, clusters,
test) an encode.json names, and helpers to test it and read its results."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fewshot.data import write_split
from fewshot.io import save_json, save_npz
from maml import test as maml_test
from maml import train as maml_train

SIDE, N_TEST_CLASSES = 16, 8


def write_encode_json(folder: Path, **files) -> Path:
    """folder/encode.json as cfe.encode writes it, naming the caches `files` (split: file name in folder)."""
    save_json(Path(folder) / "encode.json", {"caches": files, "dataset": "toy", "dim": 64, "k": 10})
    return Path(folder)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained MAML run (no val split) of the caches toy_64_K_10_{train,train_clusters,test}.npz, which the
    folder's encode.json names."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)

    def images(n_classes, per_class):
        protos = rng.integers(0, 256, size=(n_classes, SIDE, SIDE, 1))
        y = np.repeat(np.arange(n_classes), per_class)
        return np.clip(protos[y] + rng.normal(0, 40, size=(len(y), SIDE, SIDE, 1)), 0, 255).astype(np.uint8), y

    x, y = images(10, 10)
    write_split(root / "toy_64_K_10_train.npz", x, y, cluster_label=y)
    save_npz(root / "toy_64_K_10_train_clusters.npz", cluster_centers=rng.normal(size=(10, 4)).astype(np.float32))
    xt, yt = images(N_TEST_CLASSES, 8)
    write_split(root / "toy_64_K_10_test.npz", xt, yt + 500, cluster_label=yt + 500)
    write_encode_json(root, train="toy_64_K_10_train.npz", train_clusters="toy_64_K_10_train_clusters.npz",
                      test="toy_64_K_10_test.npz")
    out = root / "run"
    train_toy(root, out)
    return out


def train_toy(caches, out):  # one tiny epoch of maml.train on the caches of folder `caches`, PEM off
    maml_train.main(["--caches", str(caches), "--out", str(out), "--epochs", "1", "--batches-per-epoch", "2",
                     "--meta-batch", "2", "--hidden", "8", "--no-pem", "--threads", "1", "--device", "cpu"])


@pytest.fixture
def own_run(run_dir, tmp_path):
    """A copy of the run, results/ left out, for a test that writes the run's own result files: run_dir is shared
    by the whole module, so what one test writes there would change what the next one finds."""
    return shutil.copytree(run_dir, tmp_path / "own_run", ignore=shutil.ignore_patterns("results"))


def evaluate_run(run_dir, *args):
    maml_test.main(["--run", str(run_dir), "--steps", "2", "--threads", "1", "--device", "cpu", *map(str, args)])


def results(path):
    return json.loads(Path(path).read_text())
