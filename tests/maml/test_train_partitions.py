"""maml.train on a train cache of several k-means partitions (cfe.encode --partitions): every task's ways, and the
clusters PEM draws their queries from, belong to one partition; inconsistent partitions are refused up front."""

from pathlib import Path

import numpy as np
import pytest

import maml.pem
from fewshot.data import write_split
from fewshot.errors import UserError
from fewshot.io import save_npz
from maml import train as maml_train
from tests.maml.conftest import write_encode_json

SIDE, PER_CLUSTER = 16, 12


def partitioned_caches(root: Path, sizes=(8, 8)) -> dict:
    """len(sizes) partitions of the same images side by side: partition p holds every image once, in sizes[p]
    clusters labelled after the previous partitions' (as cfe.encode writes them)."""
    rng = np.random.default_rng(0)
    n = max(sizes) * PER_CLUSTER
    x = rng.integers(0, 256, size=(n, SIDE, SIDE, 1), dtype=np.uint8)
    X, labels, part, offset = [], [], [], 0
    for p, k in enumerate(sizes):
        X.append(x)
        labels.append(offset + rng.permutation(n) % k)
        part.append(np.full(n, p))
        offset += k
    paths = {"train": root / "toy_8_K_8_train.npz", "val": root / "toy_8_K_8_val.npz"}
    labels, part = np.concatenate(labels), np.concatenate(part)
    write_split(paths["train"], np.concatenate(X), np.zeros(len(labels), np.int64), cluster_label=labels,
                index=np.tile(np.arange(n), len(sizes)), partition=part)
    save_npz(root / "toy_8_K_8_train_clusters.npz", cluster_centers=rng.normal(size=(offset, 4)).astype(np.float32))
    write_encode_json(root, train=paths["train"].name, val=paths["val"].name,
                      train_clusters="toy_8_K_8_train_clusters.npz")
    yv = np.repeat(np.arange(100, 106), 10)
    write_split(paths["val"], x[:60], yv, cluster_label=yv)
    return {**paths, "labels": labels, "partition": part}


def run(caches, out, *extra):
    maml_train.main(["--caches", str(caches["train"].parent), "--out", str(out),
                     "--epochs", "1", "--batches-per-epoch", "4", "--meta-batch", "4", "--hidden", "8",
                     "--pem-warmup", "0", "--pem-eta", "0", "--pem-candidates", "2", "--val-tasks", "3",
                     "--threads", "1", "--device", "cpu", *map(str, extra)])


def test_tasks_and_pem_stay_within_one_partition(tmp_path, monkeypatch):
    caches = partitioned_caches(tmp_path)
    of_cluster = np.zeros(16, np.int64)
    of_cluster[8:] = 1
    real_pem, tasks = maml.pem.draw_queries, []  # a rebuild ends with the queries drawn from its pools

    def recording_pem(task, *args, **kwargs):
        new = real_pem(task, *args, **kwargs)
        tasks.append((task.classes, caches["labels"][new.query]))
        return new

    monkeypatch.setattr(maml.pem, "draw_queries", recording_pem)
    run(caches, tmp_path / "run")
    assert len(tasks) == 16  # every task of every meta-batch rebuilt (eta 0)
    for ways, query_clusters in tasks:
        assert len(set(of_cluster[ways])) == 1  # one partition's ways
        assert set(of_cluster[query_clusters]) == set(of_cluster[ways[:1]])  # queries from that partition
    assert {of_cluster[w[0]] for w, _ in tasks} == {0, 1}  # both partitions drawn


@pytest.mark.parametrize("change,message", [
    ("split", "cluster 3 has rows in partitions \\[0, 1\\]; each cluster must belong to one partition"),
    ("few", "5-way tasks need 5 classes of >= 6 images in every group \\(partition\\); group 1 has 4"),
    ("five", "PEM needs more clusters than ways: 5 clusters, --ways 5"),
    ("candidates", "--pem-candidates 8 must be in 1..7 \\(clusters in the smallest partition - 1\\)"),
])
def test_inconsistent_partitions_are_refused_before_anything_is_written(tmp_path, change, message):
    caches = partitioned_caches(tmp_path, sizes={"few": (8, 4), "five": (8, 5)}.get(change, (8, 8)))
    extra = ["--pem-candidates", "8"] if change == "candidates" else []
    if change == "split":  # one row of cluster 3 (partition 0) marked as partition 1
        part = caches["partition"].copy()
        part[np.flatnonzero(caches["labels"] == 3)[0]] = 1
        train = np.load(caches["train"])
        write_split(caches["train"], train["X"], train["Y"], cluster_label=train["cluster_label"],
                    index=train["index"], partition=part)
    with pytest.raises(UserError, match=message):
        run(caches, tmp_path / "run", *extra)
    assert not (tmp_path / "run").exists()
