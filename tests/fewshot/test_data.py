"""fewshot.data (the cache format) and fewshot.datasets: round trips, upstream files without `index`/`meta`,
bad files as UserError, and disjoint class splits (synthetic, digits, and the real Omniglot caches)."""

import os
from pathlib import Path

import numpy as np
import pytest

from fewshot.data import (
    SPLITS,
    assert_disjoint_classes,
    check_images,
    check_split,
    encoded_path,
    load_images,
    load_pseudo_labels,
    load_split,
    prepared_path,
    write_split,
)
from fewshot.errors import UserError
from fewshot.io import load_json
from tests.datafiles import omniglot_archive


def test_file_names():
    assert prepared_path("d", "omniglot", "val") == Path("d/omniglot_cache_val.npz")
    assert encoded_path("c", "omniglot", 64, 500, "train_clusters") == Path("c/omniglot_64_K_500_train_clusters.npz")


def test_write_and_load_round_trip(tmp_path):
    X = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    path = tmp_path / "s.npz"
    write_split(path, X, np.array([3, 3, 1, 1, 2, 2], dtype=np.int32), cluster_label=[0, 0, 1, 1, 1, 0],
                index=[5, 4, 3, 2, 1, 0], meta={"k": 2})
    s = load_split(path)
    assert np.array_equal(s.X, X) and s.Y.dtype == np.int64 and s.Y.tolist() == [3, 3, 1, 1, 2, 2]
    assert s.labels.tolist() == [0, 0, 1, 1, 1, 0]  # episodes come from the pseudo-labels when present
    assert s.index.tolist() == [5, 4, 3, 2, 1, 0] and s.meta == {"k": 2} and s.path == str(path)
    assert os.listdir(tmp_path) == ["s.npz"]


def test_grey_images_without_channel_axis_get_one(tmp_path):
    X = np.zeros((4, 28, 28), dtype=np.uint8)
    write_split(tmp_path / "g.npz", X, np.arange(4))
    assert load_images(tmp_path / "g.npz").shape == (4, 28, 28, 1)
    assert check_images(X).shape == (4, 28, 28, 1)


def test_upstream_files_without_index_or_meta_load(tmp_path):
    """The upstream PL-CFE caches hold only X, Y (and cluster_label for the encoded ones)."""
    X = np.zeros((5, 28, 28, 1), np.uint8)
    np.savez(tmp_path / "omniglot_cache_train.npz", X=X, Y=np.arange(5))
    s = load_split(tmp_path / "omniglot_cache_train.npz")
    assert s.cluster_label is None and s.index is None and s.meta == {} and s.labels.tolist() == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "omniglot_64_K_500_train.npz", X=X, Y=np.arange(5), cluster_label=np.array([1, 1, 0, 0, 2]))
    X2, pseudo, index = load_pseudo_labels(tmp_path / "omniglot_64_K_500_train.npz")
    assert pseudo.tolist() == [1, 1, 0, 0, 2] and index.tolist() == [0, 1, 2, 3, 4]


def test_upstream_encoded_caches_with_totensor_floats_load_as_the_same_pixels(tmp_path):
    """Upstream cfe/cfe_encoding.py saves X as torchvision ToTensor() output: float32 (N,C,H,W) = pixels / 255."""
    X = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28, 1), dtype=np.uint8)
    path = tmp_path / "omniglot_64_K_500_train.npz"
    np.savez(path, X=(X.transpose(0, 3, 1, 2) / np.float32(255)).astype(np.float32), Y=np.arange(6),
             cluster_label=np.array([0, 0, 1, 1, 2, 2], dtype=np.int32))  # sklearn's labels are int32
    assert np.array_equal(load_images(path), X)
    assert np.array_equal(load_split(path).X, X) and np.array_equal(load_pseudo_labels(path)[0], X)
    np.savez(path, X=np.full((2, 1, 28, 28), 1.5, np.float32), Y=np.arange(2))
    with pytest.raises(UserError, match="float images outside \\[0, 1\\]"):
        load_split(path)
    np.savez(path, X=np.zeros((2, 28, 28, 1), np.float32), Y=np.arange(2))  # floats in our layout: still refused
    with pytest.raises(UserError, match="must be uint8 images"):
        load_split(path)


def test_unsupervised_readers_do_not_need_labels(tmp_path):
    path = tmp_path / "x_only.npz"
    np.savez(path, X=np.zeros((3, 28, 28, 1), np.uint8), cluster_label=np.array([0, 1, 0]))
    assert load_images(path).shape == (3, 28, 28, 1)
    assert load_pseudo_labels(path)[1].tolist() == [0, 1, 0]
    with pytest.raises(UserError, match="missing array 'Y'"):
        load_split(path)


def _npz(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _npy(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return path


def _bytes(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


GOOD_X = np.zeros((3, 28, 28, 1), np.uint8)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "absent.npz", "file not found"),
    (lambda d: d, "is a folder, expected a file"),
    (lambda d: _bytes(d, "rand.npz", np.random.default_rng(0).bytes(3000)), "not a readable .npz"),
    (lambda d: _bytes(d, "empty.npz", b""), "not a readable .npz"),
    (lambda d: _bytes(d, "text.npz", b"X,Y\n1,2\n"), r"not a readable \.npz file \(it is not a zip archive\)$"),
    (lambda d: _npy(d, "plain.npy", GOOD_X), "single array"),
    (lambda d: _npz(d, "f32.npz", X=np.zeros((3, 28, 28), np.float32), Y=np.arange(3)), "must be uint8"),
    (lambda d: _npz(d, "flat.npz", X=np.zeros((3, 5), np.uint8), Y=np.arange(3)), r"\(N,H,W,C\).*\(3, 5\)"),
    (lambda d: _npz(d, "c4.npz", X=np.zeros((3, 8, 8, 4), np.uint8), Y=np.arange(3)), "C in"),
    (lambda d: _npz(d, "none.npz", X=np.zeros((0, 8, 8, 1), np.uint8), Y=np.arange(0)), "no images"),
    (lambda d: _npz(d, "noX.npz", Y=np.arange(3)), "missing array 'X' \\(has Y\\)"),
    (lambda d: _npz(d, "obj.npz", X=np.array([{}, {}], dtype=object), Y=np.arange(2)), "array 'X' is corrupt"),
    (lambda d: _npz(d, "ylen.npz", X=GOOD_X, Y=np.arange(4)), r"'Y' must have shape \(3,\)"),
    (lambda d: _npz(d, "ystr.npz", X=GOOD_X, Y=np.array(["a", "b", "c"])), "'Y' must hold integers"),
    (lambda d: _npz(d, "cl.npz", X=GOOD_X, Y=np.arange(3), cluster_label=np.zeros(2, int)), "'cluster_label' must"),
    (lambda d: _npz(d, "meta.npz", X=GOOD_X, Y=np.arange(3), meta=np.array("{oops")), "'meta' is not valid JSON"),
])
def test_bad_files_raise_user_error(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        load_split(make(tmp_path))


def test_truncated_and_damaged_npz(tmp_path):
    good = tmp_path / "good.npz"
    write_split(good, np.random.default_rng(0).integers(0, 256, (20, 28, 28, 1), dtype=np.uint8), np.arange(20))
    data = good.read_bytes()
    with pytest.raises(UserError, match="not a readable .npz"):
        load_split(_bytes(tmp_path, "cut.npz", data[: len(data) // 2]))
    damaged = bytearray(data)
    damaged[200:300] = bytes(100)  # inside X's (uncompressed) payload: the CRC check catches it
    with pytest.raises(UserError, match="corrupt"):
        load_images(_bytes(tmp_path, "damaged.npz", bytes(damaged)))


def test_damaged_npy_header_is_a_user_error(tmp_path):
    good = tmp_path / "good.npz"
    write_split(good, np.zeros((20, 28, 28, 1), np.uint8), np.arange(20))
    damaged = bytearray(good.read_bytes())
    assert b"'shape'" in damaged[100:120]  # inside X's .npy header, which numpy parses as a Python literal
    damaged[100:120] = b"x" * 20  # numpy's tokenizer fails on it (tokenize.TokenError), before any CRC check
    with pytest.raises(UserError, match=r"damaged.npz: array 'X' is corrupt"):
        load_split(_bytes(tmp_path, "damaged.npz", bytes(damaged)))


def test_large_files_images_are_memory_mapped(tmp_path, monkeypatch):
    from fewshot import data

    X = np.random.default_rng(0).integers(0, 256, (30, 12, 12, 3), dtype=np.uint8)
    write_split(tmp_path / "s.npz", X, np.arange(30) % 3)
    np.savez_compressed(tmp_path / "c.npz", X=X, Y=np.arange(30) % 3)
    assert type(load_images(tmp_path / "s.npz")) is np.ndarray  # small: read
    monkeypatch.setattr(data, "MMAP_BYTES", 0)
    mapped = load_split(tmp_path / "s.npz").X
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, X)
    mapped[0] = 0  # copy-on-write: the file keeps its pixels
    assert np.array_equal(load_images(tmp_path / "s.npz"), X)
    compressed = load_images(tmp_path / "c.npz")  # cannot be mapped: read as usual
    assert not isinstance(compressed, np.memmap) and np.array_equal(compressed, X)
    damaged = bytearray((tmp_path / "s.npz").read_bytes())
    damaged[100:120] = b"x" * 20  # X's .npy header
    with pytest.raises(UserError, match=r"d.npz: array 'X' is corrupt"):
        load_images(_bytes(tmp_path, "d.npz", bytes(damaged)))


def test_write_split_refuses_float_images(tmp_path):
    with pytest.raises(UserError, match="uint8"):
        write_split(tmp_path / "f.npz", np.zeros((2, 28, 28, 1), np.float32), [0, 1])
    assert not (tmp_path / "f.npz").exists()


def test_assert_disjoint_classes():
    assert_disjoint_classes({"train": [0, 1, 2], "val": [3, 4], "test": [5, 6, 6]})
    with pytest.raises(UserError, match="'train' and 'test' share 2 classes \\(e.g. \\[1, 2\\]\\)"):
        assert_disjoint_classes({"train": [0, 1, 2], "val": [3], "test": [2, 1, 9]})
    with pytest.raises(UserError, match="'val' and 'test' share 1"):
        assert_disjoint_classes({"train": [0], "val": [3, 4], "test": [4]})


def test_synthetic_fixture_splits_are_disjoint(prepared):
    assert_disjoint_classes(prepared.Y)
    assert {s: len(np.unique(y)) for s, y in prepared.Y.items()} == {"train": 40, "val": 10, "test": 10}


def test_digits_dataset(tmp_path, run_main):
    r = run_main("fewshot.datasets", ["digits", "--out", tmp_path / "digits"])
    assert r.code == 0, r.err
    train, test = (load_split(prepared_path(tmp_path / "digits", "digits", s)) for s in ("train", "test"))
    assert train.X.shape[1:] == (28, 28, 1) and train.X.dtype == np.uint8
    assert set(np.unique(train.Y)) == {0, 1, 2, 3, 4} and set(np.unique(test.Y)) == {5, 6, 7, 8, 9}
    info = load_json(tmp_path / "digits" / "prepare.json")
    assert info["dataset"] == "digits" and info["splits"]["test"]["classes"] == 5


def test_prepare_json_names_the_commit_the_run_started_with(tmp_path, monkeypatch, fake_git):
    from fewshot import datasets

    prepare = datasets.DATASETS["digits"]

    def commit_during_the_run(*args):
        fake_git["commit"] = "made-during-the-run"
        return prepare(*args)

    monkeypatch.setitem(datasets.DATASETS, "digits", commit_during_the_run)
    datasets.main(["digits", "--out", str(tmp_path / "digits")])
    assert fake_git["commit"] == "made-during-the-run"  # the patch ran
    assert load_json(tmp_path / "digits" / "prepare.json")["git_commit"] == "at-start"


def shared_images(a: np.ndarray, b: np.ndarray) -> int:
    """How many distinct images appear, byte for byte, in both image arrays (N,H,W,C)."""
    def rows(X):  # each image as one opaque value of H*W*C bytes, so that numpy's set operations compare images
        return np.ascontiguousarray(X).reshape(len(X), -1).view(np.dtype((np.void, X[0].nbytes))).ravel()

    return len(np.intersect1d(rows(a), rows(b)))


def test_real_omniglot_splits_are_disjoint(tmp_path, run_main):
    out = tmp_path / "omniglot"
    r = run_main("fewshot.datasets", ["omniglot", "--source", omniglot_archive(), "--out", out])
    assert r.code == 0, r.err
    splits = {s: load_split(prepared_path(out, "omniglot", s)) for s in SPLITS}
    labels = {s: split.Y for s, split in splits.items()}
    assert_disjoint_classes(labels)
    # the label ranges are disjoint by construction (train 0-1099, val 1100-1199, test 1200-1622), so the labels
    # alone cannot show a leak: no drawing may appear in two splits either
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert shared_images(splits[a].X, splits[b].X) == 0, (a, b)
    assert [len(np.unique(y)) for y in labels.values()] == [1100, 100, 423]
    assert sum(len(np.unique(y)) for y in labels.values()) == len(np.unique(np.concatenate(list(labels.values()))))
    info = load_json(out / "prepare.json")
    assert info["splits"]["train"] == {"images": 22000, "classes": 1100}
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_check_split_wants_one_integer_label_per_image(tmp_path):
    X = np.zeros((3, 28, 28, 1), np.uint8)
    assert check_split(X, [0, 1, 2], "s")[1].dtype == np.int64
    with pytest.raises(UserError, match=r"digits train split: 'Y' must have shape \(3,\), got \(2,\)"):
        check_split(X, [0, 1], "digits train split")
    with pytest.raises(UserError, match="'Y' must hold integers"):
        write_split(tmp_path / "a.npz", X, [0.5, 1.0, 2.0])
    assert not (tmp_path / "a.npz").exists()
