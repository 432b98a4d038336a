"""cfe.tasks and cfe.encode --labels: the pixel features, random and oracle labels by hand; each mode's caches made by
the same code into the same contract (names with the pixel count as dim, meta saying the mode); the settings a mode
cannot use refused in one line before anything is written; cache folders from before --labels still resume.
(The true train labels' part in each mode: tests/test_pipeline_leak.py.)"""

import json

import numpy as np
import pytest
import torch

from cfe import encode
from cfe.tasks import (
    class_means,
    kmeans_partitions,
    oracle_partition,
    pixel_features,
    random_partitions,
    resolve_clusters,
)
from fewshot.checkpoint import save_checkpoint
from fewshot.data import load_array, load_split
from fewshot.errors import UserError
from fewshot.io import load_json
from tests.conftest import ENCODE_K, ENCODE_MIN, file_bytes, files_under

PIXELS = 28 * 28  # the synthetic images' dim under --labels pixels, random, oracle


def argv(prepared, out, *extra):
    """cfe.encode's arguments without a checkpoint, as the `encoded` fixture's otherwise."""
    return ["--data-dir", str(prepared.root), "--dataset", prepared.name, "--out", str(out), "--niter", "10",
            "--min-cluster-size", str(ENCODE_MIN), "--device", "cpu", "--threads", "1", *map(str, extra)]


def caches(out, k, dim=PIXELS) -> dict:
    """{train, val, test, train_clusters, train_emb: path} of a finished run, checked against encode.json."""
    names = load_json(out / "encode.json")["caches"]
    stem = f"synth_{dim}_K_{k}"
    assert names == {s: f"{stem}_{s}.npz" for s in ("train", "val", "test", "train_clusters", "train_emb")}
    return {s: out / name for s, name in names.items()}


def test_pixel_features_by_hand():
    """Flattened, scaled to [0, 1], L2-normalised; an all-black image stays zero; batches change nothing."""
    X = np.zeros((3, 2, 2, 1), np.uint8)
    X[0, 0, 1] = 255  # one white pixel
    X[1] = 51  # 0.2 everywhere: (0.2, 0.2, 0.2, 0.2) / 0.4
    Z = pixel_features(X)
    assert Z.dtype == np.float32 and Z.shape == (3, 4)
    np.testing.assert_allclose(Z, [[0, 1, 0, 0], [0.5] * 4, [0] * 4], atol=1e-7)
    np.testing.assert_array_equal(pixel_features(X, batch=1), Z)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 3, 3, 3), dtype=np.uint8)
    flat = rgb.reshape(5, -1) / 255
    np.testing.assert_allclose(pixel_features(rgb), flat / np.linalg.norm(flat, axis=1, keepdims=True), rtol=1e-6)


def test_class_means_and_oracle_partition_by_hand():
    Z = np.array([[1.0, 0], [0, 1], [3, 3], [1, 1]], np.float32)
    np.testing.assert_allclose(class_means(Z, np.array([1, 0, 1, 0]), 3), [[0.5, 1], [2, 1.5], [0, 0]])
    truth = np.array([70, 50, 70, 50, 90])  # 3 classes; 90 has a single member
    centres, assign, rows, labels, part = oracle_partition(Z[[0, 1, 2, 3, 0]], truth, min_size=2)
    assert np.array_equal(assign, [[1, 0, 1, 0, 2]])  # relabelled in the order of the values
    np.testing.assert_allclose(centres, [[0.5, 1], [2, 1.5], [1, 0]])
    assert np.array_equal(rows, [0, 1, 2, 3, 4, 4]) and np.array_equal(labels, [1, 0, 1, 0, 2, 2])
    assert not part.any()


def test_random_partitions_are_seeded_uniform_draws():
    """Partition p draws numpy's default_rng(seed + p).integers(0, K, N); labels left unused are dropped and the
    rest relabelled (as k-means' empty clusters), small ones repeated; centres are the members' means."""
    Z = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    centres, assign, rows, labels, part = random_partitions(Z, 40, seed=7, n_partitions=2, min_size=3)
    offset = 0
    for p in range(2):
        draw = np.random.default_rng(7 + p).integers(0, 40, 30)
        used, want = np.unique(draw, return_inverse=True)
        assert np.array_equal(assign[p], want + offset)
        np.testing.assert_allclose(centres[offset:offset + len(used)], class_means(Z, want, len(used)), rtol=1e-6)
        assert np.bincount(labels[part == p] - offset).min() >= 3
        offset += len(used)
    assert len(centres) == offset < 80  # 30 draws of 40 labels leave some unused
    assert not np.array_equal(assign[0], assign[1] - len(np.unique(assign[0])))
    again = random_partitions(Z, 40, seed=7, n_partitions=2, min_size=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, (centres, assign, rows, labels, part)))


def test_oracle_k_is_the_number_of_true_classes():
    truth = np.array([3, 3, 8, 9])
    assert resolve_clusters("oracle", None, truth) == resolve_clusters("oracle", 3, truth) == 3
    with pytest.raises(UserError, match="K is the 3 true train classes; drop --clusters 5 or give 3"):
        resolve_clusters("oracle", 5, truth)
    assert resolve_clusters("pixels", None, None) == 500 and resolve_clusters("random", 7, None) == 7


def test_pixels_is_the_same_k_means_of_the_raw_pixels_without_a_checkpoint(prepared, tmp_path):
    out = tmp_path / "pixels"
    encode.main(argv(prepared, out, "--labels", "pixels", "--clusters", ENCODE_K, "--partitions", 2, "--seed", 3))
    paths = caches(out, ENCODE_K)
    Z = pixel_features(prepared.X["train"])
    np.testing.assert_array_equal(load_array(paths["train_emb"], "Z"), Z)
    centres, assign, rows, labels, part = kmeans_partitions(Z, ENCODE_K, 10, 3, 2, ENCODE_MIN)
    train = load_split(paths["train"])
    assert np.array_equal(train.cluster_label, labels) and np.array_equal(train.index, rows)
    assert np.array_equal(load_array(paths["train"], "partition"), part)
    np.testing.assert_array_equal(load_array(paths["train_clusters"], "cluster_centers"), centres)
    report = load_json(out / "encode.json")
    assert {k: report[k] for k in ("labels", "supervised", "features", "embedding_loss", "checkpoint",
                                   "checkpoint_sha256", "dim", "clusters", "partitions")} == \
        {"labels": "pixels", "supervised": False, "features": "pixels", "embedding_loss": None, "checkpoint": None,
         "checkpoint_sha256": None, "dim": PIXELS, "clusters": ENCODE_K, "partitions": 2}
    assert report["quality_at_true_k"]["clusters"] == 40  # pixels' k-means at the true K, as for an embedding
    assert train.meta["labels"] == "pixels" and load_split(paths["val"]).meta["labels"] == "pixels"
    for s in ("val", "test"):
        split = load_split(paths[s])
        assert np.array_equal(split.X, prepared.X[s]) and np.array_equal(split.cluster_label, prepared.Y[s])


def test_random_labels_follow_the_seed_and_score_nothing_at_the_true_k(prepared, tmp_path):
    out = tmp_path / "random"
    encode.main(argv(prepared, out, "--labels", "random", "--clusters", ENCODE_K, "--seed", 5))
    paths = caches(out, ENCODE_K)
    want = np.random.default_rng(5).integers(0, ENCODE_K, len(prepared.X["train"]))
    assert np.array_equal(load_array(paths["train_emb"], "cluster_label"), want)  # all K used on 800 images
    train = load_split(paths["train"])
    assert np.array_equal(train.cluster_label, want[train.index]) and np.bincount(want).min() < ENCODE_MIN
    assert np.bincount(train.cluster_label).min() == ENCODE_MIN  # small clusters repeated as usual
    report = load_json(out / "encode.json")
    assert report["labels"] == "random" and report["supervised"] is False and report["quality_at_true_k"] is None
    assert report["pseudo_label_quality"]["nmi"] < 0.1  # random labels carry nothing of the classes


def test_every_cache_names_the_loss_of_its_embedding(prepared, cfe_checkpoint, tmp_path):
    """embedding_loss: the checkpoint's arch "loss" (cfe.train --loss), "cfe" for a checkpoint from before it."""
    state = torch.load(cfe_checkpoint, weights_only=True)
    for loss, arch in (("moco", {**state["arch"], "loss": "moco"}),
                       ("cfe", {k: v for k, v in state["arch"].items() if k != "loss"})):
        ckpt = tmp_path / f"{loss}.pt"
        save_checkpoint(ckpt, "cfe", arch=arch, model=state["model"], epoch=1, config={})
        out = tmp_path / f"caches-{loss}"
        encode.main(argv(prepared, out, "--checkpoint", ckpt, "--clusters", ENCODE_K))
        assert load_json(out / "encode.json")["embedding_loss"] == loss
        paths = caches(out, ENCODE_K, dim=16)
        assert load_split(paths["test"]).meta["embedding_loss"] == loss
        assert json.loads(str(load_array(paths["train_clusters"], "meta")))["embedding_loss"] == loss


@pytest.mark.parametrize("extra, message", [
    ([], "--labels kmeans clusters a CFE embedding: give its --checkpoint"),
    (["--labels", "pixels", "--checkpoint", "x.pt"], "--labels pixels uses the raw pixels, not an embedding: drop "
                                                     "--checkpoint"),
    (["--labels", "random", "--supervised"], "--labels oracle (the true train labels: supervised, not "
                                             "unsupervised) needs --supervised, and --supervised goes with --labels "
                                             "oracle only"),
    (["--labels", "oracle", "--supervised", "--partitions", 2], "--labels oracle has one partition, the true "
                                                                "classes: drop --partitions"),
    (["--labels", "oracle", "--supervised", "--clusters", 10], "--labels oracle: K is the 40 true train classes; "
                                                               "drop --clusters 10 or give 40"),
    (["--labels", "random", "--knn-smooth", 2], "--knn-smooth smooths the features k-means clusters; --labels "
                                                "random clusters none"),
])
def test_settings_a_mode_cannot_use_are_one_line_errors_before_anything_is_written(prepared, tmp_path, run_main,
                                                                                   extra, message):
    r = run_main("cfe.encode", argv(prepared, tmp_path / "out", *extra))
    assert (r.code, r.err, r.out) == (2, f"error: {message}\n", "")
    assert not (tmp_path / "out").exists()


def test_a_mode_without_a_checkpoint_resumes_to_nothing_to_do(prepared, tmp_path, run_main):
    out = tmp_path / "random"
    args = argv(prepared, out, "--labels", "random", "--clusters", ENCODE_K, "--resume")
    assert run_main("cfe.encode", args).code == 0
    before = file_bytes(out)
    r = run_main("cfe.encode", args)
    assert r.code == 0 and "already holds the caches of random" in r.out and "nothing to do" in r.out
    assert {k: v for k, v in file_bytes(out).items() if k != "invocations.jsonl"} == \
        {k: v for k, v in before.items() if k != "invocations.jsonl"}
    r = run_main("cfe.encode", argv(prepared, out, "--labels", "pixels", "--clusters", ENCODE_K, "--resume"))
    assert r.code == 2 and r.err.endswith(": labels\n")


def test_a_cache_folder_from_before_labels_resumes_as_the_kmeans_run_it_was(prepared, cfe_checkpoint, tmp_path,
                                                                           run_main):
    """config.json without "labels" and "supervised" was written by a k-means run: the scripts' `cfe.encode
    --resume` finds it done, and another --labels is refused (the checkpoint, which kmeans alone takes, differs
    too)."""
    out = tmp_path / "caches"
    args = argv(prepared, out, "--checkpoint", cfe_checkpoint, "--clusters", ENCODE_K, "--resume")
    assert run_main("cfe.encode", args).code == 0
    config = load_json(out / "config.json")
    assert (config["labels"], config["supervised"]) == ("kmeans", False)
    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in ("labels",
                                                                                                "supervised")}))
    r = run_main("cfe.encode", args)
    assert r.code == 0 and "nothing to do" in r.out, r.err
    assert "labels" not in load_json(out / "config.json")
    before = files_under(out)
    r = run_main("cfe.encode", argv(prepared, out, "--labels", "pixels", "--clusters", ENCODE_K, "--resume"))
    assert r.code == 2 and r.err.count("\n") == 1 and "labels" in r.err and files_under(out) == before
