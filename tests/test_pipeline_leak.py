"""No training step reads the train split's true labels: replacing them changes nothing but the diagnostics.

The chain cfe.train -> cfe.encode -> maml.train (PEM on) and ep.train (both stages), and its variant with
neighbour smoothing and two k-means partitions (cfe.encode --knn-smooth 2 --partitions 2), runs on copies of a
small synthetic dataset that differ only in the train split's labels Y: the true ones, a permutation of them, and
random labels of another number of classes and other class sizes.
Weights, pseudo-labels and the MAML+PEM and EP models must be bit-identical; the pseudo-label quality reported
against the (different) truth must differ.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cfe import encode as cfe_encode
from cfe import train as cfe_train
from ep import train as ep_train
from fewshot.data import load_array, load_split, prepared_path, write_split
from maml import train as maml_train
from tests.conftest import assert_same

NAME, SIDE, K, DIM = "leak", 28, 10, 16


def synthetic_splits(seed=0) -> dict:
    """Classes of white strokes on black: each class a random set of bars, each image it shifted and noised."""
    rng = np.random.default_rng(seed)

    def split(first_label, n_classes, per_class):
        X, Y = [], []
        for c in range(n_classes):
            proto = np.zeros((SIDE, SIDE))
            for _ in range(4):
                r, col = rng.integers(4, SIDE - 4, size=2)
                if rng.random() < 0.5:
                    proto[r - 1:r + 1, max(col - 6, 0):col + 6] = 255
                else:
                    proto[max(r - 6, 0):r + 6, col - 1:col + 1] = 255
            for _ in range(per_class):
                img = np.roll(proto, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
                X.append(np.clip(img + rng.normal(0, 20, size=img.shape), 0, 255).astype(np.uint8))
                Y.append(first_label + c)
        order = rng.permutation(len(Y))
        return np.stack(X)[order][..., None], np.array(Y, dtype=np.int64)[order]

    return {"train": split(0, 20, 20), "val": split(100, 6, 10), "test": split(200, 6, 10)}


def encoded(caches: Path) -> dict:
    """{train, val, test, train_clusters, train_emb: path} as cfe.encode's encode.json names them."""
    doc = json.loads((caches / "encode.json").read_text())
    assert doc["dataset"] == NAME and doc["dim"] == DIM and doc["clusters"] == K
    assert set(doc["caches"]) == {"train", "val", "test", "train_clusters", "train_emb"}
    return {s: caches / name for s, name in doc["caches"].items()}


def pipeline(data: Path, runs: Path) -> dict:
    """cfe.train (4 BatchNorm splits, the default), then twice cfe.encode -> maml.train --caches (PEM on):
    plain, and with --knn-smooth 2 --partitions 2 ("-p2"). Returns {"": caches, "-p2": caches} (see encoded)."""
    common = ["--threads", "1", "--device", "cpu", "--seed", "3"]
    cfe_train.main(["--data", str(prepared_path(data, NAME, "train")), "--out", str(runs / "cfe"), "--epochs", "2",
                    "--batch-size", "64", "--queue-size", "256", "--hidden", "16", "--dim", str(DIM), *common])
    caches = {}
    for name, extra in (("", []), ("-p2", ["--knn-smooth", "2", "--partitions", "2"])):
        cfe_encode.main(["--checkpoint", str(runs / "cfe/checkpoints/last.pt"), "--data-dir", str(data),
                         "--dataset", NAME, "--out", str(runs / f"caches{name}"), "--clusters", str(K),
                         "--min-cluster-size", "20", "--niter", "20", *extra, *common])
        caches[name] = encoded(runs / f"caches{name}")
        maml_train.main(["--caches", str(runs / f"caches{name}"), "--out", str(runs / f"maml{name}"),
                         "--epochs", "2", "--batches-per-epoch", "3", "--meta-batch", "2", "--hidden", "8",
                         "--pem-warmup", "0", "--pem-eta", "0", "--pem-candidates", "3",
                         "--val-tasks", "5", "--val-steps", "1", *common])
    ep_train.main(["--caches", str(runs / "caches"), "--out", str(runs / "ep"), "--pretrain-epochs", "1",
                   "--finetune-epochs", "1", "--batch-size", "64", "--tasks-per-epoch", "3", "--queries", "3",
                   "--val-tasks", "3", "--hidden", "8", *common])
    return caches


def ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict, what: str):
    """Equal keys and bit-identical tensors, nested dicts and lists (optimizer states) included."""
    assert isinstance(a, dict) and a, f"{what}: nothing to compare"
    assert_same(a, b, what)


def run_copy(root: Path, splits: dict, train_y: np.ndarray) -> tuple:
    """The chain on a copy of `splits` whose train labels are `train_y`: (its runs folder, its caches)."""
    data = root / "data"
    for s, (X, Y) in splits.items():
        write_split(prepared_path(data, NAME, s), X, train_y if s == "train" else Y)
    return root / "runs", pipeline(data, root / "runs")


@pytest.fixture(scope="module")
def true_run(tmp_path_factory):
    splits = synthetic_splits()
    return splits, run_copy(tmp_path_factory.mktemp("true"), splits, splits["train"][1])


def replaced_labels(true_y: np.ndarray, how: str) -> np.ndarray:
    if how == "permuted":
        y = np.random.default_rng(1).permutation(true_y)
        assert (y != true_y).mean() > 0.5
    else:  # 3 classes of uneven sizes instead of 20 of 20, still disjoint from val (100-105) and test (200-205)
        y = 1000 + np.random.default_rng(1).integers(0, 3, len(true_y))
        assert len(np.unique(y)) == 3 != len(np.unique(true_y))
        assert len(set(np.bincount(y - 1000))) > 1  # sizes differ from class to class
    return y


# a permutation keeps the number of classes and their sizes, so it cannot catch a leak such as K = len(unique(Y));
# labels of another number of classes and other sizes can
@pytest.mark.parametrize("how", ["permuted", "other classes"])
def test_replacing_train_labels_changes_nothing_but_diagnostics(true_run, tmp_path, how):
    """Not marked slow (a few seconds): it is the one proof that training never reads the train split's truth."""
    splits, (a, caches_a) = true_run
    b, caches_b = run_copy(tmp_path, splits, replaced_labels(splits["train"][1], how))
    ca, cb = caches_a[""], caches_b[""]

    # CFE: final weights (and queue), optimizer and schedule state
    ka, kb = ckpt(a / "cfe/checkpoints/last.pt"), ckpt(b / "cfe/checkpoints/last.pt")
    assert_same_state(ka["model"], kb["model"], "cfe model")
    assert_same_state(ka["optimizer"], kb["optimizer"], "cfe optimizer")
    assert_same_state(ka["scheduler"], kb["scheduler"], "cfe scheduler")
    assert ka["optimizer"]["state"], "no momentum buffers to compare"
    assert ka["arch"]["bn_splits"] == 4  # the default: one loss per BatchNorm split
    assert ka["epoch"] == kb["epoch"] == 2

    # pseudo-labels: images, cluster labels and source rows of the train cache; centres; embeddings
    ta, tb = load_split(ca["train"]), load_split(cb["train"])
    for key in ("X", "cluster_label", "index"):
        assert np.array_equal(getattr(ta, key), getattr(tb, key)), key
    assert not np.array_equal(ta.Y, tb.Y)  # the caches do carry the (different) true labels
    assert len(np.unique(ta.cluster_label)) > 1
    assert np.array_equal(load_array(ca["train_clusters"], "cluster_centers"),
                          load_array(cb["train_clusters"], "cluster_centers"))
    assert np.array_equal(load_array(ca["train_emb"], "Z"), load_array(cb["train_emb"], "Z"))
    for s in ("val", "test"):
        va, vb = load_split(ca[s]), load_split(cb[s])
        assert np.array_equal(va.X, vb.X) and np.array_equal(va.cluster_label, vb.cluster_label)

    # MAML + PEM (PEM rebuilt every meta-batch: warm-up 0, eta 0), on the caches encode.json names
    ma, mb = ckpt(a / "maml/checkpoints/last.pt"), ckpt(b / "maml/checkpoints/last.pt")
    assert ma["config"]["train_cache"] == str(ca["train"]) and ma["config"]["centres"] == str(ca["train_clusters"])
    assert ma["config"]["val_cache"] == str(ca["val"])
    assert_same_state(ma["model"], mb["model"], "maml model")
    assert_same_state(ma["eval_model"], mb["eval_model"], "maml eval model")
    assert_same_state(ma["optimizer"], mb["optimizer"], "maml optimizer")
    assert ma["best_acc"] == mb["best_acc"]
    rows = [json.loads(line) for line in (a / "maml/metrics.jsonl").read_text().splitlines()]
    assert [r["pem_rebuilt_batches"] for r in rows] == [3, 3]

    # EP, pre-trained on the pseudo-labels then fine-tuned on their tasks
    ea, eb = ckpt(a / "ep/checkpoints/last.pt"), ckpt(b / "ep/checkpoints/last.pt")
    assert ea["stage"] == "finetune" and ea["arch"]["classes"] == K and ea["epoch"] == 2
    assert_same_state(ea["model"], eb["model"], "ep model")
    assert_same_state(ea["optimizer"], eb["optimizer"], "ep optimizer")
    assert ea["best_acc"] == eb["best_acc"]

    # the variant: smoothed embedding, two partitions side by side in the train cache, MAML + PEM on them
    pa, pb = (np.load(c["-p2"]["train"]) for c in (caches_a, caches_b))
    for key in ("X", "cluster_label", "index", "partition"):
        assert np.array_equal(pa[key], pb[key]), key
    assert set(pa["partition"].tolist()) == {0, 1} and not np.array_equal(pa["Y"], pb["Y"])
    assert np.array_equal(load_array(caches_a["-p2"]["train_clusters"], "cluster_centers"),
                          load_array(caches_b["-p2"]["train_clusters"], "cluster_centers"))
    ma, mb = ckpt(a / "maml-p2/checkpoints/last.pt"), ckpt(b / "maml-p2/checkpoints/last.pt")
    assert ma["config"]["train_cache"] == str(caches_a["-p2"]["train"])
    assert_same_state(ma["model"], mb["model"], "maml model (partitions)")
    assert_same_state(ma["eval_model"], mb["eval_model"], "maml eval model (partitions)")
    rows = [json.loads(line) for line in (a / "maml-p2/metrics.jsonl").read_text().splitlines()]
    assert [r["pem_rebuilt_batches"] for r in rows] == [3, 3]

    # only the diagnostics differ, and they must: the labels really were changed
    qa = json.loads((a / "caches/encode.json").read_text())["pseudo_label_quality"]
    qb = json.loads((b / "caches/encode.json").read_text())["pseudo_label_quality"]
    assert qa["clusters"] == qb["clusters"]
    assert qa["ari"] != qb["ari"] and qa["nmi"] != qb["nmi"]
    assert qa["nmi"] > qb["nmi"]  # clusters of the embedding follow the true classes, not the random labels
