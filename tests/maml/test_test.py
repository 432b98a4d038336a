"""maml.test: results JSON, saved episodes evaluate to the same accuracy, episodes naming image files, errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.data import load_split, write_split
from fewshot.errors import UserError
from fewshot.io import save_npz
from maml import test as maml_test
from tests.maml.conftest import N_TEST_CLASSES, evaluate_run, results, train_toy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved(run_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("episodes")
    evaluate_run(run_dir, "--tasks", 12, "--save-episodes", d / "ep.json", "--output", d / "sampled.json")
    return d / "ep.json", results(d / "sampled.json")


def test_results_json(saved, own_run):
    _, res = saved
    assert res["tasks"] == 12 == len(res["per_task_accuracy"])
    assert 0.0 <= res["accuracy"] <= 1.0
    assert res["accuracy"] == pytest.approx(np.mean(res["per_task_accuracy"]))
    assert isinstance(res["ci95"], float) and res["ci95"] >= 0
    assert res["ways"] == 5 and res["shots"] == 1 and res["steps"] == 2
    assert res["model_selection"] == "last epoch (no val split)" and res["checkpoint_epoch"] == 1
    assert res["cache"].endswith("toy_64_K_10_test.npz") and res["split"] == "test"
    assert res["head"] == "trained (5 ways)" and res["seed"] == 0 and "1.96" in res["ci95_method"]
    assert "git_commit" in res and "versions" in res
    # the default output path
    evaluate_run(own_run, "--tasks", 3)
    assert results(own_run / "results" / "test_5w1s.json")["tasks"] == 3


def test_saved_episodes_round_trip(saved, tmp_path, run_dir):
    episodes, sampled = saved
    doc = json.loads(episodes.read_text())
    assert len(doc["tasks"]) == 12 and len(doc["tasks"][0]["support"]) == 5 and len(doc["tasks"][0]["query"]) == 25
    evaluate_run(run_dir, "--episodes", episodes, "--output", tmp_path / "replayed.json")
    replayed = results(tmp_path / "replayed.json")
    assert replayed["per_task_accuracy"] == sampled["per_task_accuracy"]
    assert replayed["accuracy"] == sampled["accuracy"] and replayed["ci95"] == sampled["ci95"]
    assert replayed["tasks"] == 12 and replayed["episodes"] == str(episodes)
    # another seed samples other tasks (the comparison above is not trivially equal)
    evaluate_run(run_dir, "--tasks", 12, "--seed", 1, "--output", tmp_path / "seed1.json")
    assert results(tmp_path / "seed1.json")["per_task_accuracy"] != sampled["per_task_accuracy"]


def as_files(doc, X, folder: Path, transform=lambda a: a):
    """The same episodes with every image named by a PNG file holding its pixels (optionally transformed)."""
    folder.mkdir(exist_ok=True)

    def item(it):
        path = folder / f"{it['index']}.png"
        if not path.exists():
            Image.fromarray(transform(X[it["index"]][..., 0])).save(path)
        return {"path": str(path), "label": it["label"]}

    return {**doc, "tasks": [{part: [item(it) for it in t[part]] for part in ("support", "query")}
                             for t in doc["tasks"]]}


def test_episodes_naming_image_files(saved, tmp_path, run_dir):
    episodes, sampled = saved
    doc = json.loads(episodes.read_text())
    X = load_split(sampled["cache"]).X
    files = tmp_path / "by_file.json"
    files.write_text(json.dumps(as_files(doc, X, tmp_path / "png")))
    evaluate_run(run_dir, "--episodes", files, "--dataset", "toy", "--output", tmp_path / "files.json")
    assert results(tmp_path / "files.json")["per_task_accuracy"] == sampled["per_task_accuracy"]
    # the files are really what is evaluated: other pixels, other predictions
    inverted = tmp_path / "inverted.json"
    inverted.write_text(json.dumps(as_files(doc, X, tmp_path / "png_inv", lambda a: 255 - a)))
    evaluate_run(run_dir, "--episodes", inverted, "--dataset", "toy", "--output", tmp_path / "inv.json")
    assert results(tmp_path / "inv.json")["per_task_accuracy"] != sampled["per_task_accuracy"]
    # the dataset defaults to the run's (its encode.json's); without a name nothing knows how to read the files
    evaluate_run(run_dir, "--episodes", files, "--output", tmp_path / "x.json")
    assert results(tmp_path / "x.json")["per_task_accuracy"] == sampled["per_task_accuracy"]
    nameless = shutil.copytree(run_dir, tmp_path / "nameless")
    cfg = json.loads((nameless / "config.json").read_text())
    (nameless / "config.json").write_text(json.dumps({**cfg, "dataset": None}))
    with pytest.raises(UserError, match="image files"):
        evaluate_run(nameless, "--episodes", files, "--output", tmp_path / "y.json")


def test_other_way_count_uses_a_fresh_head_and_says_so(run_dir, tmp_path, capsys):
    evaluate_run(run_dir, "--ways", 3, "--tasks", 4, "--output", tmp_path / "3w.json")
    res = results(tmp_path / "3w.json")
    assert res["ways"] == 3 and res["tasks"] == 4 and 0 <= res["accuracy"] <= 1
    assert res["head"] == "zero-initialised for 3 ways (trained with 5)"
    assert "head zero-initialised for 3 ways (trained with 5)" in capsys.readouterr().out


def test_more_ways_than_test_classes_exits_with_an_error(run_dir, tmp_path):
    ways = N_TEST_CLASSES + 2
    proc = subprocess.run([sys.executable, "-m", "maml.test", "--run", str(run_dir), "--ways", str(ways),
                           "--tasks", "2", "--steps", "1", "--threads", "1", "--device", "cpu",
                           "--output", str(tmp_path / "r.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error:") and f"{ways}-way" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_results_name_the_commit_the_test_started_with(run_dir, tmp_path, monkeypatch, fake_git):
    evaluate = maml_test.evaluate_task

    def commit_during_the_test(*args, **kwargs):
        fake_git["commit"] = "made-during-the-test"
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(maml_test, "evaluate_task", commit_during_the_test)
    evaluate_run(run_dir, "--tasks", 2, "--output", tmp_path / "r.json")
    assert fake_git["commit"] == "made-during-the-test"  # the patch ran
    assert results(tmp_path / "r.json")["git_commit"] == "at-start"


def test_episodes_set_ways_and_shots_and_other_sources_keep_their_own_result_file(saved, own_run, tmp_path):
    episodes, _ = saved
    doc = json.loads(episodes.read_text())
    for t in doc["tasks"]:  # the same tasks as 2-shot ones: each way's first query image joins its support
        for way in range(5):
            first = next(q for q in t["query"] if q["label"] == way)
            t["query"].remove(first)
            t["support"].append(first)
    two_shot = tmp_path / "two_shot.json"
    two_shot.write_text(json.dumps(doc))
    evaluate_run(own_run, "--episodes", two_shot)  # no --shots: the file's tasks say 2
    res = results(own_run / "results" / "test_5w2s_two_shot.json")
    assert res["ways"] == 5 and res["shots"] == 2 and res["queries"] == 4 and res["tasks"] == 12
    with pytest.raises(UserError, match="asks for 1"):
        evaluate_run(own_run, "--episodes", two_shot, "--shots", 1)
    doc["tasks"][0]["support"].pop()  # one way with one support image, the others with two
    two_shot.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="one number of ways and of support images"):
        evaluate_run(own_run, "--episodes", two_shot)
    # the run's own test cache named with --cache: the usual file; another cache: its own file beside it, of the
    # split it is said to be ("other" unless --split says)
    test_cache = Path(results(own_run / "results" / "test_5w2s_two_shot.json")["cache"])
    evaluate_run(own_run, "--cache", test_cache, "--tasks", 2)
    assert results(own_run / "results" / "test_5w1s.json")["tasks"] == 2
    other = tmp_path / "more.npz"
    other.write_bytes(test_cache.read_bytes())
    evaluate_run(own_run, "--cache", other, "--tasks", 4)
    assert results(own_run / "results" / "other_5w1s_more.json")["tasks"] == 4
    assert results(own_run / "results" / "other_5w1s_more.json")["split"] == "other"
    evaluate_run(own_run, "--cache", other, "--tasks", 4, "--split", "test")
    assert results(own_run / "results" / "test_5w1s_more.json")["split"] == "test"
    assert results(own_run / "results" / "test_5w1s.json")["tasks"] == 2


@pytest.mark.parametrize("split", ["test", "val"])
def test_a_run_without_a_cache_of_the_split_needs_cache(run_dir, tmp_path, run_main, split):
    """The run's caches are what its config.json records (never guessed from file names); a split it has none
    of is a one-line error that says what to do."""
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["val_cache"] is None and cfg["test_cache"].endswith("toy_64_K_10_test.npz")
    other = tmp_path / "run"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "best.pt").write_bytes((run_dir / "checkpoints" / "best.pt").read_bytes())
    (other / "config.json").write_text(json.dumps({**cfg, "test_cache": None}))
    res = run_main("maml.test", ["--run", other, "--split", split, "--tasks", 2, "--steps", 1, "--threads", 1,
                                 "--device", "cpu", "--output", tmp_path / "r.json"])
    assert res.code == 2 and res.err == f"error: {other}: the run has no {split} cache (its config.json names " \
                                        "none); pass --cache\n"
    assert not (tmp_path / "r.json").exists()


def test_the_training_split_is_refused_before_anything_is_written(own_run, tmp_path, run_main):
    """Class splits must be disjoint: a test cache that is the train cache, or shares its classes, is refused."""
    train = Path(json.loads((own_run / "config.json").read_text())["train_cache"])
    saved = tmp_path / "ep.json"
    res = run_main("maml.test", ["--run", own_run, "--cache", train, "--tasks", 2, "--steps", 1, "--threads", 1,
                                 "--device", "cpu", "--save-episodes", saved])
    assert res.code == 2 and res.err.strip() == f"error: {train} is the run's training split {train}; test on a " \
                                                "split of other classes (or pass --allow-seen-classes)", res.err
    assert not (own_run / "results").exists() and not saved.exists()
    copy = tmp_path / "copy_test.npz"  # the same bytes under another name: all 10 training classes
    copy.write_bytes(train.read_bytes())
    with pytest.raises(UserError, match=rf"splits 'test {copy}' and 'training {train}' share 10 classes"):
        evaluate_run(own_run, "--cache", copy, "--tasks", 2, "--save-episodes", saved)
    # another file (the test images), labelled with training classes: 3 of the train split's 10 labels
    test = load_split(train.with_name("toy_64_K_10_test.npz"))
    shared = tmp_path / "shared_test.npz"
    write_split(shared, test.X, test.Y - 500 + 7, cluster_label=test.labels)  # true labels 7..14: 7, 8, 9 trained
    with pytest.raises(UserError, match=rf"splits 'test {shared}' and 'training {train}' share 3 classes"):
        evaluate_run(own_run, "--cache", shared, "--tasks", 2, "--save-episodes", saved)
    assert not (own_run / "results").exists() and not saved.exists()


def test_seen_classes_are_tested_when_allowed_and_counted(own_run, tmp_path):
    """--allow-seen-classes measures protocols whose test classes overlap the train split (upstream's); the result
    says how many of its classes the run trained on (none for the run's own test split)."""
    train = json.loads((own_run / "config.json").read_text())["train_cache"]
    evaluate_run(own_run, "--cache", train, "--tasks", 2, "--allow-seen-classes", "--output", tmp_path / "seen.json")
    assert results(tmp_path / "seen.json")["seen_classes"] == 10 and results(tmp_path / "seen.json")["tasks"] == 2
    evaluate_run(own_run, "--tasks", 2, "--output", tmp_path / "unseen.json")
    assert results(tmp_path / "unseen.json")["seen_classes"] == 0


def test_a_train_cache_without_labels_or_gone_is_not_compared_by_labels(own_run, tmp_path, capsys):
    """Upstream-written or label-free train caches have no Y: only the file comparison applies. A train cache that
    is gone (a run folder copied without its caches) cannot be compared at all, and the test says so."""
    cfg = json.loads((own_run / "config.json").read_text())
    train = load_split(cfg["train_cache"])
    test = load_split(cfg["test_cache"])
    shared = tmp_path / "shared_test.npz"  # labels that the train cache's Y would refuse: 0..7
    write_split(shared, test.X, test.Y - 500, cluster_label=test.Y - 500)
    label_free = tmp_path / "toy_64_K_10_train.npz"
    save_npz(label_free, X=train.X, cluster_label=train.cluster_label)
    (own_run / "config.json").write_text(json.dumps({**cfg, "train_cache": str(label_free)}))
    evaluate_run(own_run, "--cache", shared, "--tasks", 2, "--output", tmp_path / "r.json")
    assert results(tmp_path / "r.json")["tasks"] == 2 and results(tmp_path / "r.json")["seen_classes"] is None
    label_free.unlink()
    capsys.readouterr()
    evaluate_run(own_run, "--cache", shared, "--tasks", 2, "--output", tmp_path / "r.json")
    assert f"warning: {label_free}: not found; cannot check that {shared} shares no classes" in capsys.readouterr().err


def test_other_checkpoints_get_their_own_result_file(own_run):
    """--checkpoint last (or a snapshot) is not the run's selected model: its result must not replace the run's."""
    evaluate_run(own_run, "--tasks", 2)
    evaluate_run(own_run, "--tasks", 3, "--checkpoint", "last")
    res = results(own_run / "results" / "test_5w1s_last.json")
    assert res["tasks"] == 3 and res["model_selection"] == "last checkpoint, not the run's selection"
    assert results(own_run / "results" / "test_5w1s.json")["tasks"] == 2
    (own_run / "results" / "test_5w1s.json").unlink()  # (a result with other settings is not replaced)
    evaluate_run(own_run, "--tasks", 4, "--checkpoint", own_run / "checkpoints" / "best.pt")  # the selection itself
    assert results(own_run / "results" / "test_5w1s.json")["tasks"] == 4
    assert results(own_run / "results" / "test_5w1s.json")["model_selection"] == "last epoch (no val split)"


def strict_json(path):
    """The results file read as strict JSON: NaN or Infinity is an error."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def test_one_task_has_no_interval_and_writes_null(run_dir, tmp_path, capsys):
    evaluate_run(run_dir, "--tasks", 1, "--output", tmp_path / "one.json")
    res = strict_json(tmp_path / "one.json")
    assert res["tasks"] == 1 and res["ci95"] is None and "sqrt(n)" in res["ci95_method"]
    assert "(no interval)" in capsys.readouterr().out


def test_saved_episodes_are_refused_on_another_cache(saved, run_dir, tmp_path):
    episodes, sampled = saved
    assert json.loads(episodes.read_text())["split_fingerprint"]["images"] == N_TEST_CLASSES * 8
    split = load_split(sampled["cache"])
    other = tmp_path / "relabelled_test.npz"  # as many images, other labels: the file's indices mean other tasks
    write_split(other, split.X, split.Y[::-1], cluster_label=split.labels[::-1])
    with pytest.raises(UserError, match=rf"ep\.json: its tasks index .*toy_64_K_10_test\.npz .*not {other}"):
        evaluate_run(run_dir, "--episodes", episodes, "--cache", other, "--output", tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()
    # the same images with the same labels (e.g. another copy of the cache) are the same split
    same = tmp_path / "copy_test.npz"
    same.write_bytes(Path(sampled["cache"]).read_bytes())
    evaluate_run(run_dir, "--episodes", episodes, "--cache", same, "--output", tmp_path / "r.json")
    assert results(tmp_path / "r.json")["per_task_accuracy"] == sampled["per_task_accuracy"]


def copy_run(run_dir, dest: Path, **ckpt_changes) -> Path:
    """The run's config and best checkpoint in another folder, with checkpoint entries changed (None: removed)."""
    (dest / "checkpoints").mkdir(parents=True)
    (dest / "config.json").write_text((run_dir / "config.json").read_text())
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    ckpt.update(ckpt_changes)
    torch.save({k: v for k, v in ckpt.items() if v is not None}, dest / "checkpoints" / "best.pt")
    return dest


@pytest.mark.parametrize("changes, message", [
    ({"arch": None}, "maml checkpoint without 'arch'"),
    ({"arch": None, "epoch": None}, "without 'arch', 'epoch'"),
    ({"model": None}, "without 'model'"),
    ({"selection": None}, "without 'selection'"),
    ({"arch": {"hidden": 8}}, "'arch' entry is not a MAML architecture"),
])
def test_checkpoint_without_what_the_test_needs(run_dir, tmp_path, changes, message):
    other = copy_run(run_dir, tmp_path / "run", **changes)
    with pytest.raises(UserError, match=message):
        evaluate_run(other, "--tasks", 2, "--output", tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_weights_that_do_not_fit_are_refused_before_anything_is_written(run_dir, tmp_path):
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    state = {k: v for k, v in ckpt["model"].items() if k != "classifier.bias"}
    other = copy_run(run_dir, tmp_path / "run", model=state)
    with pytest.raises(UserError, match='Missing key.*"classifier.bias"'):
        evaluate_run(other, "--tasks", 2, "--save-episodes", tmp_path / "ep.json", "--output", tmp_path / "r.json")
    assert not (tmp_path / "ep.json").exists() and not (tmp_path / "r.json").exists()


def test_a_result_with_other_settings_is_not_replaced(saved, own_run, tmp_path, monkeypatch):
    """Two caches with one file name map to one result name: the second test must not replace the first's."""
    _, sampled = saved
    first, second = tmp_path / "a" / "clash_test.npz", tmp_path / "b" / "clash_test.npz"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(Path(sampled["cache"]).read_bytes())
    out = own_run / "results" / "other_5w1s_clash_test.json"
    evaluate_run(own_run, "--cache", first, "--tasks", 3)
    before = out.read_text()
    evaluate = maml_test.evaluate_task
    monkeypatch.setattr(maml_test, "evaluate_task", lambda *a, **k: pytest.fail("refused only after evaluating"))
    for extra, message in ((["--cache", second], r"other settings \(cache\); pass --output"),
                           (["--cache", first, "--steps", 3], r"steps 2 -> 3"),
                           (["--cache", first, "--seed", 1], r"seed 0 -> 1"),
                           (["--cache", first, "--inner-lr", 0.05], r"inner_lr 0.1 -> 0.05"),
                           (["--cache", first, "--queries", 2], r"queries 5 -> 2"),
                           (["--cache", first, "--checkpoint", "last"], None)):  # (its own file: no clash)
        args = [*extra, "--tasks", 3, "--save-episodes", tmp_path / "ep.json"]
        if message is None:
            monkeypatch.setattr(maml_test, "evaluate_task", evaluate)
            evaluate_run(own_run, *args)
            last = results(own_run / "results" / "other_5w1s_clash_test_last.json")
            assert last["tasks"] == 3 and last["model_selection"] == "last checkpoint, not the run's selection"
            assert out.read_text() == before
            continue
        with pytest.raises(UserError, match=message):
            evaluate_run(own_run, *args)
        assert out.read_text() == before and not (tmp_path / "ep.json").exists()
    with pytest.raises(UserError, match=r"tasks 3 -> 4"):
        evaluate_run(own_run, "--cache", first, "--tasks", 4)
    # the same settings again (another spelling of the same path) replace it; --output writes the other elsewhere
    evaluate_run(own_run, "--cache", first.parent / ".." / "a" / first.name, "--tasks", 3)
    assert results(out)["cache"] != json.loads(before)["cache"]
    evaluate_run(own_run, "--cache", second, "--tasks", 3, "--output", tmp_path / "second.json")
    assert results(tmp_path / "second.json")["cache"] == str(second)


def test_inner_lr_must_be_a_positive_number(run_dir, tmp_path, capsys):
    for value in ("nan", "0", "-0.1", "inf"):
        with pytest.raises(SystemExit) as info:
            evaluate_run(run_dir, "--inner-lr", value, "--output", tmp_path / "r.json")
        assert info.value.code == 2
        assert f"argument --inner-lr: invalid positive_float value: '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_a_run_finds_its_relative_caches_from_any_directory_and_after_a_move(run_dir, tmp_path, monkeypatch):
    """config.json's paths are relative to where training started: found from there, from anywhere, after a move."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "caches").mkdir(parents=True)
    elsewhere.mkdir()
    for name in ("toy_64_K_10_train.npz", "toy_64_K_10_train_clusters.npz", "toy_64_K_10_test.npz", "encode.json"):
        shutil.copy(run_dir.parent / name, work / "caches" / name)
    monkeypatch.chdir(work)
    train_toy("caches", "runs/r")
    monkeypatch.chdir(elsewhere)
    for move_first in (False, True):
        root = Path(shutil.move(work, tmp_path / "moved")) if move_first else work
        evaluate_run(root / "runs" / "r", "--tasks", 3, "--output", tmp_path / f"res{move_first}.json")
        res = results(tmp_path / f"res{move_first}.json")
        assert Path(res["cache"]).resolve() == (root / "caches" / "toy_64_K_10_test.npz").resolve()
        assert res["seen_classes"] == 0  # the train cache was found, so the class check ran


def test_the_val_split_is_tested_as_easily_as_the_test_split(own_run, tmp_path):
    """--split val tests the run's val cache (every setting is chosen on val) under results/val_*.json, with the
    very tasks a --cache of the same file draws; the split is recorded with the result."""
    test = load_split(json.loads((own_run / "config.json").read_text())["test_cache"])
    val = tmp_path / "held_out.npz"
    write_split(val, test.X[::-1], test.Y + 100, cluster_label=test.Y + 100)  # other images, other classes
    cfg = json.loads((own_run / "config.json").read_text())
    (own_run / "config.json").write_text(json.dumps({**cfg, "val_cache": str(val)}))
    evaluate_run(own_run, "--split", "val", "--tasks", 4)
    evaluate_run(own_run, "--tasks", 4)
    on_val, on_test = results(own_run / "results" / "val_5w1s.json"), results(own_run / "results" / "test_5w1s.json")
    assert (on_val["split"], on_val["cache"], on_val["tasks"]) == ("val", str(val), 4)
    assert on_test["split"] == "test" and on_val["per_task_accuracy"] != on_test["per_task_accuracy"]
    evaluate_run(own_run, "--cache", val, "--tasks", 4, "--output", tmp_path / "named.json")  # the run's val cache
    named = results(tmp_path / "named.json")
    assert named["split"] == "val" and named["per_task_accuracy"] == on_val["per_task_accuracy"]


def test_unlabelled_images_leave_maml_s_result_as_it_was(own_run):
    """MAML ignores the unlabelled images of semi-supervised tasks: the same tasks, the same accuracies, so its row
    stays comparable with EP's; the result is named and recorded as semi-supervised."""
    evaluate_run(own_run, "--tasks", 4, "--queries", 2)
    evaluate_run(own_run, "--tasks", 4, "--queries", 2, "--unlabeled", 2, "--distractors", 1)
    plain, semi = results(own_run / "results/test_5w1s.json"), results(own_run / "results/test_5w1s_2u1d.json")
    assert (semi["unlabeled"], semi["distractors"]) == (2, 1) and plain["unlabeled"] == 0
    assert semi["tasks_sha256"] == plain["tasks_sha256"] and semi["per_task_accuracy"] == plain["per_task_accuracy"]
