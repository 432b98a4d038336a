"""cfe.tasks and cfe.encode --labels: the pixel features, random and oracle labels by hand; each mode's caches made by
the same code into the same contract (names with the pixel count as dim, meta saying the mode); the settings a mode
cannot use refused in one line before anything is written; cache folders from before --labels still resume; and
k-means itself: small-cluster repetition, every point clustered, neighbour smoothing, several partitions.
(The true train labels' part in each mode: tests/test_pipeline_leak.py.)"""

import json

import numpy as np
import pytest
import torch

from cfe import encode
from cfe.encode import embed
from cfe.model import load_cfe
from cfe.tasks import (
    class_means,
    kmeans,
    kmeans_partitions,
    knn_smooth,
    oracle_partition,
    pixel_features,
    random_partitions,
    repeat_small_clusters,
    resolve_clusters,
)
from fewshot.checkpoint import save_checkpoint
from fewshot.data import (
    load_array,
    load_cluster_partition,
    load_pseudo_labels,
    load_split,
    prepared_path,
    write_split,
)
from fewshot.errors import UserError
from fewshot.io import load_json
from tests.cfe.test_encode import encode_argv
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


def test_repeat_small_clusters_by_hand():
    assign = np.array([2, 0, 2, 1, 0, 2, 2, 0, 2])  # sizes: 0 -> 3, 1 -> 1, 2 -> 5
    rows = repeat_small_clusters(assign, 4)
    assert np.array_equal(np.bincount(assign[rows]), [4, 4, 5])
    assert np.array_equal(np.sort(rows[assign[rows] == 2]), np.flatnonzero(assign == 2))  # big cluster untouched
    assert np.array_equal(rows[assign[rows] == 1], [3, 3, 3, 3])  # the single member, copied
    assert np.array_equal(np.bincount(rows[assign[rows] == 0], minlength=8)[[1, 4, 7]], [2, 1, 1])
    assert np.all(np.diff(rows) >= 0) and set(rows) == set(range(len(assign)))
    assert np.array_equal(repeat_small_clusters(assign, 1), np.arange(len(assign)))  # nothing to repeat


def test_kmeans_uses_every_point_not_a_subsample():
    """With 3,000 points and k = 2, faiss would subsample to 256 per centroid by default; on every point, a
    converged centre is exactly the mean of all the points assigned to it."""
    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(0, 1, (1500, 4)), rng.normal(8, 1, (1500, 4))]).astype(np.float32)
    centres, assign = kmeans(Z, 2, niter=20, seed=0)
    assert assign.shape == (3000,) and set(np.unique(assign)) == {0, 1}
    assert np.bincount(assign).tolist() == [1500, 1500]
    for j in range(2):
        np.testing.assert_allclose(centres[j], Z[assign == j].mean(0), atol=1e-4)
    again = kmeans(Z, 2, niter=20, seed=0)
    assert np.array_equal(again[1], assign) and np.array_equal(again[0], centres)


def test_upstream_sklearn_kmeans_is_upstreams_call_and_finds_the_clusters(monkeypatch):
    """--kmeans sklearn: scikit-learn's KMeans as upstream's cfe_encoding.py calls it (k-means++, best of 10 runs of
    at most 3,000 iterations), seeded by --seed; on well-separated blobs it finds them."""
    import sklearn.cluster

    calls, real = [], sklearn.cluster.KMeans

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(sklearn.cluster, "KMeans", spy)
    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(0, 1, (300, 4)), rng.normal(8, 1, (300, 4))]).astype(np.float32)
    centres, assign = kmeans(Z, 2, niter=20, seed=5, algorithm="sklearn")
    assert calls == [((2,), {"random_state": 5, "init": "k-means++", "n_init": 10, "max_iter": 3000})]
    assert centres.dtype == np.float32 and assign.dtype == np.int64 and sorted(np.bincount(assign)) == [300, 300]
    for j in range(2):
        np.testing.assert_allclose(centres[j], Z[assign == j].mean(0), atol=1e-4)
    assert np.array_equal(kmeans(Z, 2, niter=20, seed=5, algorithm="sklearn")[1], assign)  # seeded


def test_kmeans_refuses_more_clusters_than_points():
    with pytest.raises(UserError, match="larger than the number of train images"):
        kmeans(np.zeros((5, 3), np.float32), 6, niter=5, seed=0)


def test_knn_smooth_by_hand():
    """Four unit vectors at 0, 10, 90 and 135 degrees: with one neighbour, 0 and 10 pair up, and so do 90 and 135
    (cosine 0.71, against 0.17 between 90 and 10)."""
    angles = np.deg2rad([0, 10, 90, 135])
    Z = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    def unit(v):
        return v / np.linalg.norm(v)
    want = np.stack([unit(Z[0] + Z[1]), unit(Z[1] + Z[0]), unit(Z[2] + Z[3]), unit(Z[3] + Z[2])])
    np.testing.assert_allclose(knn_smooth(Z, 1), want, atol=1e-6)
    np.testing.assert_allclose(knn_smooth(Z, 3), np.tile(unit(Z.sum(0)), (4, 1)), atol=1e-6)  # all of them
    assert knn_smooth(Z, 0) is Z  # off
    dup = np.repeat(Z[:1], 3, 0)  # exact copies tie with the point itself: smoothing leaves them as they are
    np.testing.assert_allclose(knn_smooth(dup, 1), dup, atol=1e-6)


def test_knn_smooth_run_clusters_the_smoothed_embedding_without_the_true_labels(prepared, cfe_checkpoint, tmp_path):
    data = tmp_path / "data"
    for s in ("train", "val", "test"):
        Y = prepared.Y[s]
        write_split(prepared_path(data, prepared.name, s), prepared.X[s],
                    np.random.default_rng(2).permutation(Y) if s == "train" else Y)
    runs = {}
    for name, data_dir in (("true", prepared.root), ("permuted", data)):
        out = tmp_path / name
        encode.main(encode_argv(cfe_checkpoint, data_dir, prepared.name, out) + ["--knn-smooth", "3"])
        runs[name] = out
    stem = f"{prepared.name}_16_K_{ENCODE_K}"
    Z = load_array(runs["true"] / f"{stem}_train_emb.npz", "Z")
    want = knn_smooth(embed(load_cfe(cfe_checkpoint), prepared.X["train"], 256, torch.device("cpu")), 3)
    np.testing.assert_allclose(Z, want, atol=1e-5)
    a, b = (load_split(runs[n] / f"{stem}_train.npz") for n in ("true", "permuted"))
    assert np.array_equal(a.cluster_label, b.cluster_label) and not np.array_equal(a.Y, b.Y)
    assert a.meta["knn_smooth"] == 3
    with pytest.raises(UserError, match="--knn-smooth 800 must be smaller than the number of train images"):
        encode.main(encode_argv(cfe_checkpoint, prepared.root, prepared.name, tmp_path / "bad")
                    + ["--knn-smooth", "800"])
    assert not (tmp_path / "bad").exists()


def test_partitions_are_k_means_runs_with_successive_seeds_side_by_side(encoded, prepared, cfe_checkpoint,
                                                                         tmp_path):
    """--partitions 3 --seed 4: partition p is what a one-partition run with --seed 4 + p makes, relabelled after
    the partitions before it; every train image is in every partition; the true train labels play no part."""
    data = tmp_path / "data"
    for s in ("train", "val", "test"):
        Y = prepared.Y[s]
        write_split(prepared_path(data, prepared.name, s), prepared.X[s],
                    np.random.default_rng(2).permutation(Y) if s == "train" else Y)
    stem = f"{prepared.name}_16_K_{ENCODE_K}"
    runs = {}
    for name, data_dir, extra in (("three", prepared.root, ["--partitions", "3", "--seed", "4"]),
                                  ("permuted", data, ["--partitions", "3", "--seed", "4"]),
                                  ("seed5", prepared.root, ["--seed", "5"])):
        encode.main(encode_argv(cfe_checkpoint, data_dir, prepared.name, tmp_path / name) + extra)
        runs[name] = load_split(tmp_path / name / f"{stem}_train.npz")
    three, n = runs["three"], len(prepared.X["train"])
    part = load_array(tmp_path / "three" / f"{stem}_train.npz", "partition")
    assert sorted(set(part.tolist())) == [0, 1, 2] and np.all(np.diff(part) >= 0)
    centres = load_array(tmp_path / "three" / f"{stem}_train_clusters.npz", "cluster_centers")
    assert three.meta["partitions"] == 3 and three.meta["clusters"] == ENCODE_K
    assert three.meta["clusters_used"] == len(centres) == three.cluster_label.max() + 1
    of_cluster = load_cluster_partition(tmp_path / "three" / f"{stem}_train.npz", three.cluster_label)
    assert np.array_equal(of_cluster[three.cluster_label], part)
    offset = 0
    for p in range(3):
        rows = part == p
        assert set(three.index[rows].tolist()) == set(range(n))  # every image, once or repeated
        assert np.bincount(three.cluster_label[rows] - offset).min() >= ENCODE_MIN
        if p == 1:  # the same rows and labels as a one-partition run with seed 4 + 1
            assert np.array_equal(three.index[rows], runs["seed5"].index)
            assert np.array_equal(three.cluster_label[rows] - offset, runs["seed5"].cluster_label)
        offset = three.cluster_label[rows].max() + 1
    assert np.array_equal(three.cluster_label, runs["permuted"].cluster_label)  # labels never reach k-means
    assert not np.array_equal(three.Y, runs["permuted"].Y)
    emb = np.load(tmp_path / "three" / f"{stem}_train_emb.npz")
    assert emb["partition_labels"].shape == (3, n) and np.array_equal(emb["cluster_label"], emb["partition_labels"][0])
    report = load_json(tmp_path / "three" / "encode.json")
    assert len(report["partition_quality"]) == 3 and report["train_rows"] == len(part)
    mean_ari = np.mean([q["ari"] for q in report["partition_quality"]])
    assert report["pseudo_label_quality"]["ari"] == pytest.approx(mean_ari)
    # a one-partition cache has no partition array (as upstream's): one partition of every cluster
    assert "partition" not in np.load(encoded.path["train"]).files
    _, labels, _ = load_pseudo_labels(encoded.path["train"])
    assert not load_cluster_partition(encoded.path["train"], labels).any()
    with pytest.raises(UserError, match="exceeds 2\\*\\*31 - 1"):
        encode.main(encode_argv(cfe_checkpoint, prepared.root, prepared.name, tmp_path / "bad")
                    + ["--partitions", "2", "--seed", str(2**31 - 1)])
    assert not (tmp_path / "bad").exists()
