"""fewshot.baseline: the nearest-prototype rule by hand, and a run that writes results on maml.test's tasks."""

import numpy as np
import pytest

from fewshot.baseline import nearest_prototype_accuracy
from fewshot.episodes import Task, sample_tasks
from fewshot.io import load_json


def test_nearest_prototype_by_hand():
    # 2 ways, 2 shots: prototypes at (0, 0) and (4, 0); queries at (1, 0) -> way 0, (3, 0) -> way 1, (2.5, 0) -> 1
    features = np.array([[0, 1], [0, -1], [4, 1], [4, -1], [1, 0], [3, 0], [2.5, 0]], dtype=np.float32)
    task = Task(support=np.arange(4), support_y=np.array([0, 0, 1, 1]), query=np.array([4, 5, 6]),
                query_y=np.array([0, 1, 0]), classes=np.array([7, 9]))
    assert nearest_prototype_accuracy(features, task) == pytest.approx(2 / 3)


def test_sample_tasks_is_a_function_of_the_seed(prepared):
    labels = prepared.Y["test"]
    a, b = sample_tasks(labels, 5, 1, 5, 20, seed=3), sample_tasks(labels, 5, 1, 5, 20, seed=3)
    assert all((x.query == y.query).all() and (x.classes == y.classes).all() for x, y in zip(a, b))
    c = sample_tasks(labels, 5, 1, 5, 20, seed=4)
    assert any((x.query != y.query).any() for x, y in zip(a, c))


def test_run_writes_a_result_per_shot_on_the_sampled_tasks(prepared, tmp_path, run_main):
    out = tmp_path / "pixels"
    r = run_main("fewshot.baseline", ["--cache", prepared.path["test"], "--out", out, "--tasks", 30, "--seed", 2])
    assert r.code == 0, r.err
    for shots in (1, 5):
        res = load_json(out / "results" / f"test_5w{shots}s.json")
        assert res["tasks"] == len(res["per_task_accuracy"]) == 30 and res["split"] == "test"
        assert res["accuracy"] == pytest.approx(np.mean(res["per_task_accuracy"]))
        X = prepared.X["test"].reshape(len(prepared.X["test"]), -1).astype(np.float32) / 255
        tasks = sample_tasks(prepared.Y["test"], 5, shots, 5, 30, seed=2)
        assert res["per_task_accuracy"] == [nearest_prototype_accuracy(X, t) for t in tasks]
    # the synthetic classes are bars at fixed places: pixels tell them apart far above chance (20%)
    assert load_json(out / "results" / "test_5w5s.json")["accuracy"] > 0.6
    assert "git_commit" in load_json(out / "config.json")


def test_a_split_with_too_few_classes_is_one_line(prepared, tmp_path, run_main):
    r = run_main("fewshot.baseline", ["--cache", prepared.path["test"], "--out", tmp_path / "p", "--ways", 11])
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "11-way" in r.err
    assert not (tmp_path / "p").exists()
