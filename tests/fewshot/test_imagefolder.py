"""fewshot.imagefolder: image folders (with and without split folders) and CIFAR-10 on small files in their real
format, and each bad input as one line that names the file."""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fewshot.data import SPLITS, assert_disjoint_classes
from fewshot.imagefolder import CLASS_SPLIT_FILE, split_classes
from fewshot.io import load_json
from tests.datafiles import SHARED_DATA
from tests.fewshot.readers import CIFAR, assert_error, colour, image_bytes, prepare, rgb_means, write

# image folders ------------------------------------------------------------------------------------------------


def image_folder(root, classes, per_class=2, start=0):
    """root/<class>/ with images of several formats and modes, a hidden file and one file that is not an image."""
    kinds = [("JPEG", ".JPG", "RGB"), ("PNG", ".png", "RGBA"), ("PNG", ".Png", "L"), ("JPEG", ".jpeg", "RGB")]
    for i, c in enumerate(classes):
        for j in range(per_class):
            fmt, suffix, mode = kinds[(i + j) % len(kinds)]
            rgb = (200, 200, 200) if mode == "L" else colour(start + i)
            write(root / c / f"img{j}{suffix}", image_bytes(rgb, size=(30, 24), fmt=fmt, mode=mode))
        write(root / c / ".DS_Store", b"\0\1")
    write(root / classes[0] / "notes.txt", b"not an image")


def test_imagefolder_with_split_folders(tmp_path, run_main):
    layout = {"train": ["cat", "ant", "bee"], "val": ["dog", "eel"], "test": ["fox", "gnu"]}
    for k, (s, classes) in enumerate(layout.items()):
        image_folder(tmp_path / "root" / s, classes, start=3 * k)
    splits = prepare(run_main, "imagefolder", tmp_path / "root", tmp_path / "out")
    info = load_json(tmp_path / "out" / "prepare.json")
    assert info["classes"] == {s: sorted(c) for s, c in layout.items()}
    assert "skipped 3 non-image files" in info["source"] and "WARNING" not in info["source"]
    assert {s: v.X.shape for s, v in splits.items()} == {"train": (6, 84, 84, 3), "val": (4, 84, 84, 3),
                                                          "test": (4, 84, 84, 3)}
    assert [np.unique(v.Y).tolist() for v in splits.values()] == [[0, 1, 2], [3, 4], [5, 6]]
    assert all(v.X.dtype == np.uint8 for v in splits.values())


def test_imagefolder_without_val_warns(tmp_path, run_main):
    image_folder(tmp_path / "root" / "train", ["a", "b"])
    image_folder(tmp_path / "root" / "test", ["c", "d"])
    splits = prepare(run_main, "imagefolder", tmp_path / "root", tmp_path / "out")
    assert set(splits) == {"train", "test"}
    assert "WARNING: no" in load_json(tmp_path / "out" / "prepare.json")["source"]


def test_imagefolder_without_split_folders_writes_and_reuses_the_class_split(tmp_path, run_main):
    names = [f"class{i:02d}" for i in range(10)]
    image_folder(tmp_path / "root", names)
    out = tmp_path / "out"
    splits = prepare(run_main, "imagefolder", tmp_path / "root", out)
    written = load_json(out / CLASS_SPLIT_FILE)
    assert written["seed"] == 0 and written["splits"] == split_classes(names, seed=0)
    assert [len(written["splits"][s]) for s in SPLITS] == [6, 2, 2]
    assert load_json(out / "prepare.json")["classes"] == written["splits"]
    assert [len(v.Y) for v in splits.values()] == [12, 4, 4]
    assert_disjoint_classes({s: v.Y for s, v in splits.items()})
    # a second preparation follows the file as it now is, not a new draw
    swapped = {"train": written["splits"]["test"] + written["splits"]["train"][2:],
               "val": written["splits"]["val"], "test": written["splits"]["train"][:2]}
    (out / CLASS_SPLIT_FILE).write_text(json.dumps({**written, "splits": swapped}))
    again = prepare(run_main, "imagefolder", tmp_path / "root", out)
    assert load_json(out / "prepare.json")["classes"] == {s: sorted(v) for s, v in swapped.items()}
    assert [len(v.Y) for v in again.values()] == [12, 4, 4]


@pytest.mark.parametrize("case", ["missing test", "class in two splits", "one image", "empty folder",
                                  "empty root", "corrupt image", "unexpected folder", "stale class split"])
def test_imagefolder_errors(tmp_path, run_main, case):
    root, out = tmp_path / "root", tmp_path / "out"
    flat = case in ("empty root", "stale class split")
    if flat:
        root.mkdir()
        if case == "stale class split":
            image_folder(root, ["a", "b", "c"])
            write(out / CLASS_SPLIT_FILE, json.dumps({"splits": {"train": ["a"], "val": ["b"], "test": ["z"]}})
                  .encode())
    else:
        image_folder(root / "train", ["a", "b"])
        if case != "missing test":
            image_folder(root / "test", ["a" if case == "class in two splits" else "c", "d"])
    if case == "one image":
        next((root / "test" / "d").glob("img1.*")).unlink()
    if case == "empty folder":
        (root / "val").mkdir()
    if case == "corrupt image":
        write(root / "test" / "c" / "img0.png", b"\x89PNG\r\n\x1a\n broken")
    if case == "unexpected folder":
        image_folder(root / "validation", ["e"])
    expected = {"missing test": (f"{root / 'test'}: split folder not found",),
                "class in two splits": ("class a is in two splits: train", str(root / "test")),
                "one image": (f"{root / 'test'}: class d has 1 image(s); each class needs at least 2",),
                "empty folder": (f"{root / 'val'}: no class folders",),
                "empty root": (f"{root}: no class folders",),
                "corrupt image": (f"{root / 'test' / 'c' / 'img0.png'}: not an image file",),
                "unexpected folder": (f"{root / 'validation'}: unexpected folder",),
                "stale class split": (f"{out / CLASS_SPLIT_FILE}: its classes differ", "delete it")}
    r = run_main("fewshot.datasets", ["imagefolder", "--source", root, "--out", out])
    assert_error(r, *expected[case])
    assert not (out / "prepare.json").exists()


def test_class_split_gives_every_split_a_class(tmp_path, run_main):
    assert split_classes(["c", "a", "b"]) == split_classes(["a", "b", "c"], seed=0)
    assert sorted(len(v) for v in split_classes(["a", "b", "c"]).values()) == [1, 1, 1]
    assert [len(v) for v in split_classes([str(i) for i in range(100)]).values()] == [64, 16, 20]
    image_folder(tmp_path / "root", ["a", "b"])
    r = run_main("fewshot.datasets", ["imagefolder", "--source", tmp_path / "root", "--out", tmp_path / "out"])
    assert_error(r, "2 classes cannot be split into train, val, test")


def test_preparers_without_class_names_still_work(tmp_path, monkeypatch, run_main):
    from fewshot import datasets

    def two_values(source, out):
        return "made up", {"train": (np.zeros((2, 8, 8, 1), np.uint8), [0, 0]),
                           "test": (np.zeros((2, 8, 8, 1), np.uint8), [1, 1])}

    monkeypatch.setitem(datasets.DATASETS, "digits", two_values)
    r = run_main("fewshot.datasets", ["digits", "--out", tmp_path / "out"])
    assert r.code == 0, r.err
    assert "classes" not in load_json(tmp_path / "out" / "prepare.json")


# CIFAR-10 -----------------------------------------------------------------------------------------------------


def cifar_tarball(path, classes=CIFAR, broken=None):
    """CIFAR's layout, one train and one test image of each class, a README and a macOS resource fork."""
    with tarfile.open(path, "w:gz") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("README.md", b"CIFAR-10 as JPEGs\n")
        for s in ("train", "test"):
            for c in classes:
                data = image_bytes(colour(CIFAR.index(c)), size=(32, 32))
                add(f"{s}/{c}/0000.jpg", data[:50] if f"{s}/{c}" == broken else data)
        add("train/cat/._0000.jpg", b"resource fork")
    return path


def test_cifar10_tarball_and_folder(tmp_path, run_main):
    archive = cifar_tarball(tmp_path / "cifar10-jpeg.tar.gz")
    splits = prepare(run_main, "cifar10", archive, tmp_path / "out")
    info = load_json(tmp_path / "out" / "prepare.json")
    assert set(splits) == {"train", "test"} and "skipped 1 non-image files" in info["source"]
    assert info["classes"] == {"train": list(CIFAR[:5]), "test": list(CIFAR[5:])}
    for s, labels in (("train", range(5)), ("test", range(5, 10))):
        assert splits[s].X.shape == (10, 32, 32, 3) and splits[s].X.dtype == np.uint8
        assert np.array_equal(splits[s].Y, np.repeat(list(labels), 2))  # CIFAR's own class indices
        for label, mean in rgb_means(splits[s]).items():
            assert np.abs(mean - colour(label)).max() < 4
    folder = tmp_path / "extracted"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    again = prepare(run_main, "cifar10", folder, tmp_path / "out2")
    assert all(np.array_equal(again[s].X, splits[s].X) and np.array_equal(again[s].Y, splits[s].Y) for s in splits)


@pytest.mark.parametrize("case", ["missing class", "corrupt member", "not a tarball", "missing folder"])
def test_cifar10_errors(tmp_path, run_main, case):
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    if case == "missing class":
        cifar_tarball(archive, classes=CIFAR[:9])
    if case == "corrupt member":
        cifar_tarball(archive, broken="test/frog")
    if case == "not a tarball":
        archive.write_bytes(b"\x1f\x8b not really gzip")
    source = archive
    if case == "missing folder":
        source = tmp_path / "folder"
        image_folder(source / "train", list(CIFAR))
    expected = {"missing class": ("expected the ten CIFAR-10 classes; missing ['truck']",),
                "corrupt member": (f"{archive}: member test/frog/0000.jpg: cannot read image",),
                "not a tarball": (f"{archive}: not a readable tar archive",),
                "missing folder": (f"{tmp_path / 'folder' / 'test'}: folder not found",)}
    r = run_main("fewshot.datasets", ["cifar10", "--source", source, "--out", tmp_path / "out"])
    assert_error(r, *expected[case])


@pytest.mark.slow
def test_real_cifar10(tmp_path, run_main):
    source = Path(os.environ.get("CIFAR10_SOURCE", "") or SHARED_DATA / "cifar10" / "cifar10-jpeg.tar.gz")
    if not source.exists():
        pytest.skip(f"{source} not found (set CIFAR10_SOURCE)")
    splits = prepare(run_main, "cifar10", source, tmp_path / "cifar10")
    assert set(splits) == {"train", "test"}
    for s, labels in (("train", range(5)), ("test", range(5, 10))):
        assert splits[s].X.shape == (30000, 32, 32, 3) and splits[s].X.dtype == np.uint8
        assert np.unique(splits[s].Y, return_counts=True)[1].tolist() == [6000] * 5
        assert np.unique(splits[s].Y).tolist() == list(labels)
    assert load_json(tmp_path / "cifar10" / "prepare.json")["classes"]["test"] == list(CIFAR[5:])
