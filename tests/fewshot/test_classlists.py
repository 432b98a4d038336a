"""fewshot.classlists: the shipped mini/tieredImageNet val and test lists, and --exclude-classes on an image folder
(its train split loses the listed classes; val and test keep theirs)."""

import re

import pytest

from fewshot.classlists import BENCHMARKS, read_class_list, resolve_exclusion, shipped
from fewshot.errors import UserError
from fewshot.imagefolder import CLASS_SPLIT_FILE
from fewshot.io import load_json
from tests.fewshot.readers import assert_error, prepare
from tests.fewshot.test_imagefolder import image_folder

SIZES = {"miniimagenet_val": 16, "miniimagenet_test": 20, "tieredimagenet_val": 97, "tieredimagenet_test": 160}
MINI_TEST, TIERED_VAL = "n01930112", "n02099267"  # one class of each list


def test_shipped_lists_have_the_benchmarks_class_counts():
    lists = {name: read_class_list(shipped(name)[0]) for name in SIZES}
    assert {name: len(set(v)) for name, v in lists.items()} == SIZES
    assert all(re.fullmatch(r"n\d{8}", c) for v in lists.values() for c in v)
    for b in BENCHMARKS:  # a benchmark's val and test classes are disjoint
        assert not set(lists[f"{b}_val"]) & set(lists[f"{b}_test"])
        assert resolve_exclusion(b)[0] == set(lists[f"{b}_val"]) | set(lists[f"{b}_test"])
    assert MINI_TEST in lists["miniimagenet_test"] and TIERED_VAL in lists["tieredimagenet_val"]


def test_resolve_exclusion(tmp_path):
    assert resolve_exclusion("none") == (set(), [])
    f = tmp_path / "mine.txt"
    f.write_text("# my held-out classes\nzebra\n\n  okapi  # a comment\n")
    names, lists = resolve_exclusion(f"miniimagenet_test,{f}")
    assert names == set(read_class_list(shipped("miniimagenet_test")[0])) | {"zebra", "okapi"}
    assert lists == ["miniimagenet_test", str(f)]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    for spec, message in [("imagenet", "neither a shipped list"), (",", "is empty"),
                          (str(tmp_path / "empty.txt"), "names no class")]:
        with pytest.raises(UserError, match=message):
            resolve_exclusion(spec)


def test_imagefolder_leaves_listed_classes_out_of_train_by_default(tmp_path, run_main):
    layout = {"train": [MINI_TEST, TIERED_VAL, "cat"], "val": ["n03417042", "dog"], "test": ["fox", "gnu"]}
    for k, (s, classes) in enumerate(layout.items()):
        image_folder(tmp_path / "root" / s, classes, start=3 * k)
    prepare(run_main, "imagefolder", tmp_path / "root", tmp_path / "out")
    info = load_json(tmp_path / "out" / "prepare.json")
    assert info["classes"]["train"] == ["cat"]
    assert info["classes"]["val"] == sorted(layout["val"])  # val and test are not the embedding's data
    assert info["excluded_classes"] == {"lists": list(BENCHMARKS), "removed": sorted([MINI_TEST, TIERED_VAL])}
    assert "left 2 listed classes out of train" in info["source"]

    r = run_main("fewshot.datasets", ["imagefolder", "--source", tmp_path / "root", "--out", tmp_path / "all",
                                      "--exclude-classes", "none"])
    assert r.code == 0, r.err
    info = load_json(tmp_path / "all" / "prepare.json")
    assert info["classes"]["train"] == sorted(layout["train"])
    assert info["excluded_classes"] == {"lists": [], "removed": []}


def test_imagefolder_class_split_is_drawn_before_the_exclusion(tmp_path, run_main):
    names = [f"class{i:02d}" for i in range(10)]
    image_folder(tmp_path / "root", names)
    prepare(run_main, "imagefolder", tmp_path / "root", tmp_path / "out")
    drawn = load_json(tmp_path / "out" / CLASS_SPLIT_FILE)["splits"]
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n".join([drawn["train"][0], drawn["test"][0]]))
    r = run_main("fewshot.datasets", ["imagefolder", "--source", tmp_path / "root", "--out", tmp_path / "out",
                                      "--exclude-classes", held_out])
    assert r.code == 0, r.err
    info = load_json(tmp_path / "out" / "prepare.json")
    assert load_json(tmp_path / "out" / CLASS_SPLIT_FILE)["splits"] == drawn  # the same class split
    assert info["classes"] == {**drawn, "train": drawn["train"][1:]}
    assert info["excluded_classes"]["removed"] == [drawn["train"][0]]


def test_exclusion_errors(tmp_path, run_main):
    image_folder(tmp_path / "root" / "train", [MINI_TEST])
    image_folder(tmp_path / "root" / "test", ["fox", "gnu"])
    r = run_main("fewshot.datasets", ["imagefolder", "--source", tmp_path / "root", "--out", tmp_path / "out"])
    assert_error(r, f"{tmp_path / 'root' / 'train'}: every train class is in the --exclude-classes lists")
    assert not (tmp_path / "out" / "prepare.json").exists()
    r = run_main("fewshot.datasets", ["glyphs", "--out", tmp_path / "g", "--exclude-classes", "none"])
    assert_error(r, "--exclude-classes applies to imagefolder only")
