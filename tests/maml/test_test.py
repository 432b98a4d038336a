"""maml.test: results JSON, saved episodes evaluate to the same accuracy, episodes naming image files, errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot.data import load_split, write_split
from fewshot.errors import UserError
from fewshot.io import save_npz
from maml import test as maml_test
from maml import train as maml_train

ROOT = Path(__file__).resolve().parents[2]
SIDE, N_TEST_CLASSES = 16, 8


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained MAML run whose config points at toy_64_K_10_train.npz (test cache beside it)."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)

    def images(n_classes, per_class):
        protos = rng.integers(0, 256, size=(n_classes, SIDE, SIDE, 1))
        y = np.repeat(np.arange(n_classes), per_class)
        return np.clip(protos[y] + rng.normal(0, 40, size=(len(y), SIDE, SIDE, 1)), 0, 255).astype(np.uint8), y

    x, y = images(10, 10)
    write_split(root / "toy_64_K_10_train.npz", x, y, cluster_label=y)
    save_npz(root / "toy_64_K_10_train_clusters.npz", cluster_centers=rng.normal(size=(10, 4)).astype(np.float32))
    xt, yt = images(N_TEST_CLASSES, 8)
    write_split(root / "toy_64_K_10_test.npz", xt, yt + 500, cluster_label=yt + 500)
    out = root / "run"
    maml_train.main(["--train-cache", str(root / "toy_64_K_10_train.npz"), "--out", str(out), "--epochs", "1",
                     "--batches-per-epoch", "2", "--meta-batch", "2", "--hidden", "8", "--no-pem",
                     "--threads", "1", "--device", "cpu"])
    return out


def evaluate_run(run_dir, *args):
    maml_test.main(["--run", str(run_dir), "--steps", "2", "--threads", "1", "--device", "cpu", *map(str, args)])


def results(path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def saved(run_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("episodes")
    evaluate_run(run_dir, "--tasks", 12, "--save-episodes", d / "ep.json", "--output", d / "sampled.json")
    return d / "ep.json", results(d / "sampled.json")


def test_results_json(saved, run_dir):
    _, res = saved
    assert res["tasks"] == 12 == len(res["per_task_accuracy"])
    assert 0.0 <= res["accuracy"] <= 1.0
    assert res["accuracy"] == pytest.approx(np.mean(res["per_task_accuracy"]))
    assert isinstance(res["ci95"], float) and res["ci95"] >= 0
    assert res["ways"] == 5 and res["shots"] == 1 and res["steps"] == 2
    assert res["model_selection"] == "last epoch (no val split)" and res["checkpoint_epoch"] == 1
    assert res["cache"].endswith("toy_64_K_10_test.npz")
    assert "git_commit" in res and "versions" in res
    # the default output path
    evaluate_run(run_dir, "--tasks", 3)
    assert results(run_dir / "results" / "test_5w1s.json")["tasks"] == 3


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
    # without a dataset name nothing knows how to read the files
    with pytest.raises(UserError, match="image files"):
        evaluate_run(run_dir, "--episodes", files, "--output", tmp_path / "x.json")


def test_other_way_count_uses_a_fresh_head(run_dir, tmp_path):
    evaluate_run(run_dir, "--ways", 3, "--tasks", 4, "--output", tmp_path / "3w.json")
    res = results(tmp_path / "3w.json")
    assert res["ways"] == 3 and res["tasks"] == 4 and 0 <= res["accuracy"] <= 1


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
    evaluate = maml_test.evaluate

    def commit_during_the_test(*args, **kwargs):
        fake_git["commit"] = "made-during-the-test"
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(maml_test, "evaluate", commit_during_the_test)
    evaluate_run(run_dir, "--tasks", 2, "--output", tmp_path / "r.json")
    assert fake_git["commit"] == "made-during-the-test"  # the patch ran
    assert results(tmp_path / "r.json")["git_commit"] == "at-start"


def test_episodes_set_ways_and_shots_and_other_sources_keep_their_own_result_file(saved, run_dir, tmp_path):
    episodes, _ = saved
    doc = json.loads(episodes.read_text())
    for t in doc["tasks"]:  # the same tasks as 2-shot ones: each way's first query image joins its support
        for way in range(5):
            first = next(q for q in t["query"] if q["label"] == way)
            t["query"].remove(first)
            t["support"].append(first)
    two_shot = tmp_path / "two_shot.json"
    two_shot.write_text(json.dumps(doc))
    evaluate_run(run_dir, "--episodes", two_shot)  # no --shots: the file's tasks say 2
    res = results(run_dir / "results" / "test_5w2s_two_shot.json")
    assert res["ways"] == 5 and res["shots"] == 2 and res["queries"] == 4 and res["tasks"] == 12
    with pytest.raises(UserError, match="asks for 1"):
        evaluate_run(run_dir, "--episodes", two_shot, "--shots", 1)
    doc["tasks"][0]["support"].pop()  # one way with one support image, the others with two
    two_shot.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="one number of ways and of support images"):
        evaluate_run(run_dir, "--episodes", two_shot)
    # the run's own test cache named with --cache: the usual file; another cache: its own file beside it
    test_cache = Path(results(run_dir / "results" / "test_5w2s_two_shot.json")["cache"])
    evaluate_run(run_dir, "--cache", test_cache, "--tasks", 2)
    assert results(run_dir / "results" / "test_5w1s.json")["tasks"] == 2
    other = tmp_path / "other_test.npz"
    other.write_bytes(test_cache.read_bytes())
    evaluate_run(run_dir, "--cache", other, "--tasks", 4)
    assert results(run_dir / "results" / "test_5w1s_other_test.json")["tasks"] == 4
    assert results(run_dir / "results" / "test_5w1s.json")["tasks"] == 2


def test_a_train_cache_without_the_train_suffix_needs_cache(run_dir, tmp_path):
    cfg = json.loads((run_dir / "config.json").read_text())
    other = tmp_path / "run"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "best.pt").write_bytes((run_dir / "checkpoints" / "best.pt").read_bytes())
    (other / "config.json").write_text(json.dumps({**cfg, "train_cache": str(tmp_path / "pseudo.npz")}))
    with pytest.raises(UserError, match="pass --cache"):
        evaluate_run(other, "--tasks", 2, "--output", tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_other_checkpoints_get_their_own_result_file(run_dir):
    """--checkpoint last (or a snapshot) is not the run's selected model: its result must not replace the run's."""
    evaluate_run(run_dir, "--tasks", 2)
    evaluate_run(run_dir, "--tasks", 3, "--checkpoint", "last")
    res = results(run_dir / "results" / "test_5w1s_last.json")
    assert res["tasks"] == 3 and res["model_selection"] == "last checkpoint, not the run's selection"
    assert results(run_dir / "results" / "test_5w1s.json")["tasks"] == 2
    evaluate_run(run_dir, "--tasks", 4, "--checkpoint", run_dir / "checkpoints" / "best.pt")  # the selection itself
    assert results(run_dir / "results" / "test_5w1s.json")["tasks"] == 4
    assert results(run_dir / "results" / "test_5w1s.json")["model_selection"] == "last epoch (no val split)"
