"""cfe.encode: the cache contract (docs/design.md, cache contract: the files and encode.json naming them),
small-cluster repetition, k-means on every point, and validation before anything is written."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cfe import encode
from cfe.encode import embed, embedding_data, quality_at_true_k
from cfe.model import load_cfe
from fewshot.data import (
    load_array,
    load_pseudo_labels,
    load_split,
    prepared_path,
    write_split,
)
from fewshot.errors import UserError
from fewshot.io import atomic_path, load_json, read_jsonl, save_npz
from tests.conftest import ENCODE_K, ENCODE_MIN, file_bytes, files_under


def encode_argv(checkpoint, data_dir, dataset, out):
    """The arguments the `encoded` fixture runs cfe.encode with, writing to `out`."""
    return ["--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--dataset", dataset, "--out", str(out),
            "--clusters", str(ENCODE_K), "--niter", "10", "--min-cluster-size", str(ENCODE_MIN), "--device", "cpu",
            "--threads", "1"]


def test_files_follow_the_cache_contract(encoded):
    names = sorted(os.listdir(encoded.out))  # os.listdir shows hidden temporary files too
    stem = f"{encoded.dataset}_{encoded.dim}_K_{encoded.clusters}"
    assert names == sorted(["config.json", "encode.json", "invocations.jsonl"] + [f"{stem}_{s}.npz" for s in
                                                              ("train", "val", "test", "train_clusters", "train_emb")])
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")]
    for split in ("train", "val", "test"):
        with np.load(encoded.path[split]) as npz:
            assert {"X", "Y", "cluster_label", "index"} <= set(npz.files)
            assert npz["X"].dtype == np.uint8 and npz["X"].shape[1:] == (28, 28, 1)
            assert npz["Y"].dtype == np.int64 and npz["cluster_label"].dtype == np.int64
    centres = load_array(encoded.path["train_clusters"], "cluster_centers")
    Z = load_array(encoded.path["train_emb"], "Z")
    assert centres.shape == (encoded.clusters, encoded.dim) and Z.shape == (800, encoded.dim)
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1, atol=1e-5)


def test_encode_json_names_the_caches_and_what_the_next_stage_needs(encoded):
    """The next stage reads the files, dim and K from encode.json; it never parses a file name."""
    report = load_json(encoded.out / "encode.json")
    assert report["dataset"] == encoded.dataset and report["dim"] == encoded.dim
    assert report["clusters"] == encoded.clusters and report["clusters_used"] == encoded.clusters
    assert report["caches"] == {s: path.name for s, path in encoded.path.items()}  # relative to the folder
    assert all((encoded.out / name).is_file() for name in report["caches"].values())
    assert {"checkpoint", "checkpoint_epoch", "checkpoint_sha256", "niter", "knn_smooth", "partitions", "seed",
            "min_cluster_size", "train_images", "train_rows", "repeated_rows", "seconds", "pseudo_label_quality",
            "quality_at_true_k", "embedding_data", "git_commit", "versions"} <= set(report)
    assert "k" not in report and "k" not in load_json(encoded.out / "config.json")
    # the default task construction: k-means of a CFE-loss embedding, unsupervised (cfe/tasks.py)
    assert {k: report[k] for k in ("labels", "supervised", "features", "embedding_loss")} == \
        {"labels": "kmeans", "supervised": False, "features": "embedding", "embedding_loss": "cfe"}


def test_train_cache_rows_are_prepared_rows_with_their_pseudo_labels(encoded, prepared):
    split = load_split(encoded.path["train"])
    X, Y = prepared.X["train"], prepared.Y["train"]
    assert np.array_equal(split.X, X[split.index]) and np.array_equal(split.Y, Y[split.index])
    assert np.array_equal(np.unique(split.index), np.arange(len(X)))  # every image is in the cache
    emb_labels = load_array(encoded.path["train_emb"], "cluster_label")
    assert np.array_equal(split.cluster_label, emb_labels[split.index])
    assert set(np.unique(split.cluster_label)) == set(range(encoded.clusters))
    X2, pseudo, index = load_pseudo_labels(encoded.path["train"])  # what the meta-learners read
    assert np.array_equal(pseudo, split.cluster_label) and np.array_equal(index, split.index)


def test_small_clusters_are_repeated_to_the_minimum_and_big_ones_kept(encoded):
    split = load_split(encoded.path["train"])
    emb_labels = load_array(encoded.path["train_emb"], "cluster_label")
    sizes = np.bincount(emb_labels)
    rows = np.bincount(split.cluster_label)
    assert (rows >= encoded.min_size).all()
    assert (rows == np.maximum(sizes, encoded.min_size)).all()
    assert (sizes < encoded.min_size).any() and (sizes >= encoded.min_size).any()  # both cases occur here
    report = load_json(encoded.out / "encode.json")
    assert report["repeated_rows"] == len(split.index) - 800 > 0


def test_val_and_test_keep_their_true_labels(encoded, prepared):
    for s in ("val", "test"):
        split = load_split(encoded.path[s])
        assert np.array_equal(split.cluster_label, split.Y)
        assert np.array_equal(split.X, prepared.X[s]) and np.array_equal(split.Y, prepared.Y[s])
        assert np.array_equal(split.index, np.arange(len(split.Y)))
        assert split.meta["clusters"] == encoded.clusters


def test_report_has_pseudo_label_quality(encoded):
    q = load_json(encoded.out / "encode.json")["pseudo_label_quality"]
    assert set(q) == {"ari", "nmi", "acc", "purity", "clusters"} and q["clusters"] == encoded.clusters
    assert 0 <= q["nmi"] <= 1 and 0 < q["purity"] <= 1


def test_report_has_quality_at_the_true_number_of_classes_and_the_caches_keep_clusters_k(encoded, prepared):
    """One more k-means with K = the number of true train classes (40 here) scores the embedding as clustering
    papers do; the caches keep the pseudo-labels of --clusters (10)."""
    true_k = len(np.unique(prepared.Y["train"]))
    assert true_k != encoded.clusters  # otherwise the test could not tell the two apart
    q = load_json(encoded.out / "encode.json")["quality_at_true_k"]
    assert set(q) == {"ari", "nmi", "acc", "purity", "clusters"} and q["clusters"] == true_k
    assert 0 <= q["nmi"] <= 1 and 0 < q["acc"] <= 1
    assert len(np.unique(load_split(encoded.path["train"]).cluster_label)) == encoded.clusters
    assert len(np.unique(load_array(encoded.path["train_emb"], "cluster_label"))) == encoded.clusters
    assert len(load_array(encoded.path["train_clusters"], "cluster_centers")) == encoded.clusters


def test_quality_at_true_k_by_hand():
    """Two far-apart blobs labelled by blob: k-means with K = 2 finds them exactly; one class has nothing to score."""
    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(0, 0.1, (30, 3)), rng.normal(5, 0.1, (30, 3))]).astype(np.float32)
    Y = np.repeat([7, 9], 30)
    q = quality_at_true_k(Z, Y, niter=10, seed=0)
    assert q["clusters"] == 2 and [q[m] for m in ("acc", "nmi", "ari", "purity")] == pytest.approx([1, 1, 1, 1])
    assert quality_at_true_k(Z, np.full(60, 3), niter=10, seed=0) is None


def test_every_cache_records_the_data_the_embedding_was_trained_on(encoded, prepared, cfe_checkpoint, tmp_path):
    """The checkpoint's config names cfe.train's --data; the prepare.json beside it says which dataset that is,
    from which source, with which classes excluded (a missing key: null)."""
    data = tmp_path / "cfe_data" / "synth_cache_train.npz"
    data.parent.mkdir()
    data.write_bytes(prepared.path["train"].read_bytes())
    excluded = {"lists": ["val_test_classes.txt"], "removed": ["cat", "dog"]}
    (data.parent / "prepare.json").write_text(json.dumps({"dataset": "synth", "source": "generated",
                                                          "excluded_classes": excluded, "splits": {}}))
    state = torch.load(cfe_checkpoint, weights_only=True)
    state["config"] = {"data": str(data)}
    ckpt = tmp_path / "trained_on.pt"
    torch.save(state, ckpt)
    out = tmp_path / "caches"
    encode.main(encode_argv(ckpt, prepared.root, prepared.name, out))
    want = {"data": str(data), "dataset": "synth", "source": "generated", "excluded_classes": excluded}
    assert load_json(out / "encode.json")["embedding_data"] == want
    for s in ("train", "val", "test"):
        assert load_split(out / encoded.path[s].name).meta["embedding_data"] == want
    for name in ("train_clusters", "train_emb"):
        assert json.loads(str(load_array(out / encoded.path[name].name, "meta")))["embedding_data"] == want
    # the fixture's checkpoint has an empty config: nothing known
    nothing = {"data": None, "dataset": None, "source": None, "excluded_classes": None}
    assert load_json(encoded.out / "encode.json")["embedding_data"] == nothing
    assert load_split(encoded.path["train"]).meta["embedding_data"] == nothing


def test_embedding_data_without_prepare_json_or_config(tmp_path):
    data = tmp_path / "x_cache_train.npz"  # no prepare.json beside it
    assert embedding_data({"data": str(data)}) == {"data": str(data), "dataset": None, "source": None,
                                                   "excluded_classes": None}
    nothing = {"data": None, "dataset": None, "source": None, "excluded_classes": None}
    assert embedding_data(None) == embedding_data({}) == embedding_data({"epochs": 3}) == nothing
    (tmp_path / "prepare.json").write_text(json.dumps({"dataset": "omniglot"}))  # older: no source, no exclusions
    assert embedding_data({"data": str(data)}) == {"data": str(data), "dataset": "omniglot", "source": None,
                                                   "excluded_classes": None}
    (tmp_path / "prepare.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="prepare.json: not a JSON object"):
        embedding_data({"data": str(data)})


def test_rerun_needs_resume_and_labels_do_not_depend_on_the_true_train_labels(encoded, prepared, cfe_checkpoint,
                                                                              tmp_path):
    argv = encode_argv(cfe_checkpoint, prepared.root, prepared.name, encoded.out)
    before = files_under(encoded.out)
    with pytest.raises(UserError, match="already holds a run"):
        encode.main(argv)
    assert files_under(encoded.out) == before
    # same images, shuffled true labels: k-means must give exactly the same pseudo-labels (seeded, labels unseen)
    data = tmp_path / "data"
    for s in ("train", "val", "test"):
        Y = prepared.Y[s]
        write_split(prepared_path(data, prepared.name, s), prepared.X[s],
                    np.random.default_rng(1).permutation(Y) if s == "train" else Y)
    out = tmp_path / "again"
    argv[argv.index("--data-dir") + 1], argv[argv.index("--out") + 1] = str(data), str(out)
    encode.main(argv)
    a = load_split(encoded.path["train"])
    b = load_split(out / encoded.path["train"].name)
    assert np.array_equal(a.cluster_label, b.cluster_label) and np.array_equal(a.index, b.index)
    assert not np.array_equal(a.Y, b.Y)


def assert_same_caches(a, b):
    """Two cache folders hold the same arrays, metas and encode.json, but for the fields two runs of the same
    settings may differ in: the seconds taken and the git commit of the code (a "-dirty" suffix comes and goes)."""
    def contents(out) -> dict:
        strip = {"seconds", "git_commit"}
        found = {"encode.json": {k: v for k, v in load_json(out / "encode.json").items() if k not in strip}}
        for path in sorted(out.glob("*.npz")):
            with np.load(path) as npz:
                found[path.name] = {k: npz[k] for k in npz.files}
            if "meta" in found[path.name]:
                meta = json.loads(str(found[path.name]["meta"]))
                found[path.name]["meta"] = {k: v for k, v in meta.items() if k not in strip}
        return found

    ca, cb = contents(a), contents(b)
    assert ca.keys() == cb.keys()
    for name in ca:
        assert ca[name].keys() == cb[name].keys(), name
        for key, value in ca[name].items():
            if isinstance(value, np.ndarray):
                assert value.dtype == cb[name][key].dtype and np.array_equal(value, cb[name][key]), (name, key)
            else:
                assert value == cb[name][key], (name, key)


def test_an_interrupted_run_writes_no_encode_json_and_resumes_to_the_same_caches(
        encoded, prepared, cfe_checkpoint, tmp_path, monkeypatch):
    """scripts/omniglot.sh takes encode.json as the sign that encoding finished and otherwise reruns cfe.encode
    with --resume: an interrupted run must leave no encode.json, and the rerun must make what one run makes."""
    out = tmp_path / "caches"
    argv = encode_argv(cfe_checkpoint, prepared.root, prepared.name, out)
    real_write_split, written = encode.write_split, []

    def write_split_cut_short(path, *args, **kwargs):
        written.append(Path(path).name)
        if len(written) == 2:  # Ctrl-C while the second cache (val) is half written
            with atomic_path(path) as tmp:
                tmp.write_bytes(b"half an npz")
                raise KeyboardInterrupt
        real_write_split(path, *args, **kwargs)

    monkeypatch.setattr(encode, "write_split", write_split_cut_short)
    with pytest.raises(KeyboardInterrupt):
        encode.main(argv)
    monkeypatch.undo()
    stem = f"{encoded.dataset}_{encoded.dim}_K_{encoded.clusters}"
    assert written == [f"{stem}_train.npz", f"{stem}_val.npz"]
    # what was written before stays; no encode.json, no temporary file (os.listdir shows hidden files too)
    kept = [f"{stem}_{s}.npz" for s in ("train", "train_clusters", "train_emb")]
    assert sorted(os.listdir(out)) == sorted(["config.json", "invocations.jsonl", *kept])
    encode.main(argv + ["--resume"])
    assert sorted(os.listdir(out)) == sorted(os.listdir(encoded.out))
    assert_same_caches(out, encoded.out)
    assert [row["resumed"] for row in read_jsonl(out / "invocations.jsonl")] == [False, True]


def test_resume_does_nothing_when_done_and_encodes_again_after_the_checkpoint_changed(prepared, cfe_checkpoint,
                                                                                     tmp_path, run_main):
    """The scripts call cfe.encode --resume on every run: finished caches of the checkpoint's current contents
    are kept as they are; a checkpoint rewritten in place (last.pt after more training) is encoded again."""
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(cfe_checkpoint.read_bytes())
    out = tmp_path / "caches"
    argv = encode_argv(ckpt, prepared.root, prepared.name, out) + ["--resume"]
    assert run_main("cfe.encode", argv).code == 0
    caches = {p.name: p.read_bytes() for p in out.glob("*.npz")} | {"encode.json": (out / "encode.json").read_bytes()}
    r = run_main("cfe.encode", argv)
    assert r.code == 0 and "nothing to do" in r.out
    assert {p.name: p.read_bytes() for p in out.glob("*.npz")} | {"encode.json": (out / "encode.json").read_bytes()} \
        == caches
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, ckpt)
    r = run_main("cfe.encode", argv)
    assert r.code == 0 and "nothing to do" not in r.out
    assert load_json(out / "encode.json")["checkpoint_sha256"] != json.loads(caches["encode.json"])["checkpoint_sha256"]


def test_resume_with_another_k_or_checkpoint_is_refused_and_changes_nothing(prepared, cfe_checkpoint, tmp_path,
                                                                            run_main):
    """The script reruns cfe.encode --resume on an existing caches folder; caches of other settings must stay
    as they are, with a one-line error."""
    out = tmp_path / "caches"
    argv = encode_argv(cfe_checkpoint, prepared.root, prepared.name, out) + ["--resume"]
    assert run_main("cfe.encode", argv).code == 0
    before = file_bytes(out)
    other = tmp_path / "other.pt"  # the same weights under another name: the setting compared is the path
    other.write_bytes(cfe_checkpoint.read_bytes())
    for option, value in (("--clusters", "5"), ("--checkpoint", str(other))):
        changed = list(argv)
        changed[changed.index(option) + 1] = value
        r = run_main("cfe.encode", changed)
        assert r.code == 2 and r.err.count("\n") == 1, r.err
        assert r.err.startswith("error: --resume with settings that differ") and r.err.endswith(f": {option[2:]}\n")
        assert file_bytes(out) == before, option
    r = run_main("cfe.encode", argv + ["--knn-smooth", "2"])
    assert r.code == 2 and r.err.endswith(": knn_smooth\n") and file_bytes(out) == before


def test_missing_val_and_test_are_optional(prepared, cfe_checkpoint, tmp_path):
    data = tmp_path / "data"
    write_split(prepared_path(data, "onlytrain", "train"), prepared.X["train"][:200], prepared.Y["train"][:200])
    out = tmp_path / "out"
    encode.main(["--checkpoint", str(cfe_checkpoint), "--data-dir", str(data), "--dataset", "onlytrain",
                 "--out", str(out), "--clusters", "4", "--niter", "5", "--min-cluster-size", "5", "--threads", "1",
                 "--device", "cpu"])
    assert sorted(p.name for p in out.glob("*.npz")) == [f"onlytrain_16_K_4_{s}.npz" for s in
                                                         ("train", "train_clusters", "train_emb")]
    caches = load_json(out / "encode.json")["caches"]
    assert caches == {s: f"onlytrain_16_K_4_{s}.npz" for s in ("train", "train_clusters", "train_emb")}


def test_embed_is_normalised_and_independent_of_the_batch_size(cfe_checkpoint, prepared):
    model = load_cfe(cfe_checkpoint)
    X = prepared.X["val"][:50]
    a = embed(model, X, 7, torch.device("cpu"))
    b = embed(model, X, 1024, torch.device("cpu"))
    assert a.shape == (50, 16) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)  # eval mode: batch norm uses running statistics
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)


def test_every_train_file_names_the_checkpoint_that_made_it(encoded, cfe_checkpoint):
    meta = load_split(encoded.path["train"]).meta
    assert meta["checkpoint_sha256"] == hashlib.sha256(cfe_checkpoint.read_bytes()).hexdigest()
    assert meta["checkpoint_epoch"] == 1  # the epoch the fixture checkpoint records
    for name in ("train_clusters", "train_emb"):
        assert json.loads(str(load_array(encoded.path[name], "meta"))) == meta


@pytest.mark.parametrize("case, message", [
    ("short_labels", r"'Y' must have shape \(800,\), got \(100,\)"),
    ("shared_class", "splits 'train' and 'val' share 1 classes"),
])
def test_bad_train_labels_and_shared_classes_are_refused_before_anything_is_written(
        prepared, cfe_checkpoint, tmp_path, case, message):
    data, out = tmp_path / "data", tmp_path / "out"
    for s in ("train", "val", "test"):
        write_split(prepared_path(data, prepared.name, s), prepared.X[s], prepared.Y[s])
    train = prepared_path(data, prepared.name, "train")
    if case == "short_labels":
        save_npz(train, X=prepared.X["train"], Y=prepared.Y["train"][:100])  # write_split would refuse it
    if case == "shared_class":  # one train image labelled with a val class
        Y = prepared.Y["train"].copy()
        Y[0] = prepared.Y["val"][0]
        write_split(train, prepared.X["train"], Y)
    with pytest.raises(UserError, match=message):
        encode.main(["--checkpoint", str(cfe_checkpoint), "--data-dir", str(data), "--dataset", prepared.name,
                     "--out", str(out), "--clusters", "4", "--niter", "5", "--device", "cpu", "--threads", "1"])
    assert not out.exists()


def test_kmeans_sklearn_writes_the_same_contract_and_says_so(prepared, cfe_checkpoint, tmp_path):
    out = tmp_path / "sk"
    encode.main(encode_argv(cfe_checkpoint, prepared.root, prepared.name, out) + ["--kmeans", "sklearn"])
    report = load_json(out / "encode.json")
    assert report["kmeans"] == "sklearn" and load_json(out / "config.json")["kmeans"] == "sklearn"
    assert report["clusters_used"] == ENCODE_K and (out / report["caches"]["train"]).is_file()

