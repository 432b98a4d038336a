"""maml.train's bad input: every one is a one-line error before the run folder is written (rates, centres,
image shapes, a non-finite loss, cache options that do not fit together)."""

import re

import numpy as np
import pytest

from fewshot.data import write_split
from fewshot.errors import UserError
from fewshot.io import save_json, save_npz
from maml import train as maml_train
from tests.maml.test_train import N_CLUSTERS, SIDE, SMALL, load, run, toy_caches


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return toy_caches(tmp_path_factory.mktemp("toy"))


@pytest.mark.parametrize("option, value, kind", [
    ("--meta-lr", "-1", "positive_float"),  # Adam raised a ValueError traceback after the run folder was written
    ("--meta-lr", "0", "positive_float"),
    ("--inner-lr", "nan", "positive_float"),
    ("--pem-keep", "nan", "fraction"),
    ("--pem-keep", "0", "fraction"),
    ("--pem-keep", "2", "fraction"),
    ("--pem-eta", "1.5", "unit_float"),
    ("--pem-eta", "nan", "unit_float"),
    ("--seed", "-1", "seed_int"),  # np.random.seed raised a traceback after the run folder was written
])
def test_impossible_rates_are_usage_errors_before_anything_is_written(caches, tmp_path, capsys, option, value, kind):
    with pytest.raises(SystemExit) as info:
        run(caches, tmp_path / "run", option, value)
    assert info.value.code == 2
    assert f"argument {option}: invalid {kind} value: '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_centres_without_images_are_refused_before_anything_is_written(caches, tmp_path):
    """Upstream or hand-made caches may keep a centre no image belongs to; PEM would crash on it once it starts."""
    centres = np.load(caches["clusters"])["cluster_centers"]
    extra = np.concatenate([centres, centres[:2] + 1])  # clusters 10 and 11 have no members
    save_npz(tmp_path / "more_clusters.npz", cluster_centers=extra)
    more = dict(train=caches["train"], val=caches["val"], clusters=tmp_path / "more_clusters.npz")
    with pytest.raises(UserError, match=r"more_clusters\.npz: 2 of 12 clusters have no images .*\(cluster 10, 11\)"):
        run(more, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    run(more, tmp_path / "nopem", "--no-pem", "--epochs", 1)


@pytest.mark.parametrize("h, w, message", [
    (SIDE, SIDE - 4, r"wide_train\.npz: images are 16x12; MAML's network needs square images"),
    (8, 8, r"wide_train\.npz: 8x8 images are too small for the 4-block network"),
])
def test_non_square_or_tiny_images_are_refused_before_anything_is_written(tmp_path, h, w, message):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(N_CLUSTERS), 8)
    x = rng.integers(0, 256, size=(len(y), h, w, 1), dtype=np.uint8)
    paths = {"train": tmp_path / "wide_train.npz", "val": tmp_path / "wide_val.npz",
             "clusters": tmp_path / "wide_centres.npz"}
    write_split(paths["train"], x, y, cluster_label=y)
    write_split(paths["val"], x, y, cluster_label=y)
    save_npz(paths["clusters"], cluster_centers=rng.normal(size=(N_CLUSTERS, 4)).astype(np.float32))
    with pytest.raises(UserError, match=message):
        run(paths, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_non_finite_loss_names_a_checkpoint_only_when_there_is_one(caches, tmp_path, monkeypatch):
    meta_loss, calls = maml_train.meta_loss, []

    def nan_from(call):
        def patched(*args, **kwargs):
            calls.append(1)
            loss, acc = meta_loss(*args, **kwargs)
            return (loss * float("nan") if len(calls) >= call else loss), acc
        return patched

    monkeypatch.setattr(maml_train, "meta_loss", nan_from(1))  # the very first meta-batch
    with pytest.raises(UserError, match="non-finite meta-loss at epoch 1") as info:
        run(caches, tmp_path / "first", "--no-pem")
    assert "no checkpoint was saved yet" in str(info.value) and "last.pt" not in str(info.value)
    calls.clear()
    monkeypatch.setattr(maml_train, "meta_loss", nan_from(4))  # epoch 2's first meta-batch (3 batches an epoch)
    with pytest.raises(UserError, match=r"non-finite meta-loss at epoch 2; last good checkpoint: .*last\.pt"):
        run(caches, tmp_path / "second", "--no-pem")
    assert load(tmp_path / "second")["epoch"] == 1


@pytest.mark.parametrize("case, message", [
    ("pem-without-clusters", r"PEM needs the train cache's cluster centres: pass --centres \(or --no-pem\)$"),
    ("caches-and-val", "--val-cache, --centres go with --train-cache; with --caches, .*encode.json names the caches"),
    ("no-caches-entry", r"encode\.json: names no train cache and cluster centres"),
    ("no-encode-json", r"encode\.json: file not found"),
])
def test_cache_options_that_do_not_fit_are_one_line_errors_before_anything_is_written(caches, tmp_path, run_main,
                                                                                      case, message):
    old = tmp_path / "old_caches"
    old.mkdir()
    save_json(old / "encode.json", {"dataset": "toy", "k": 10})  # an encode.json that names no caches
    source = {"pem-without-clusters": ["--train-cache", caches["train"]],
              "caches-and-val": ["--caches", caches["dir"], "--val-cache", caches["val"], "--centres", "c.npz"],
              "no-caches-entry": ["--caches", old],
              "no-encode-json": ["--caches", tmp_path]}[case]
    res = run_main("maml.train", [*source, "--out", tmp_path / "run", *SMALL])
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1, res.err
    assert res.err.startswith("error: ") and re.search(message, res.err), res.err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("source", [[], ["--caches", "c", "--train-cache", "t.npz"]])
def test_one_source_of_caches_is_required(tmp_path, capsys, source):
    with pytest.raises(SystemExit) as info:
        maml_train.main([*source, "--out", str(tmp_path / "run")])
    assert info.value.code == 2 and "--caches" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
