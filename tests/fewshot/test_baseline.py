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


def test_the_pixel_baseline_records_no_embedding_options(prepared, tmp_path, run_main):
    r = run_main("fewshot.baseline", ["--cache", prepared.path["test"], "--out", tmp_path / "p", "--tasks", 3,
                                      "--shots", 1])
    assert r.code == 0, r.err
    cfg, res = load_json(tmp_path / "p" / "config.json"), load_json(tmp_path / "p" / "results" / "test_5w1s.json")
    assert not {"checkpoint", "batch_size", "device", "threads"} & set(cfg) and "checkpoint" not in res
    assert cfg["method"] == res["method"] == "raw pixels, nearest prototype (no training)"


def test_the_embedding_baseline_classifies_in_the_frozen_cfe_embedding_on_the_same_tasks(
        prepared, cfe_checkpoint, tmp_path, run_main):
    import torch

    from cfe.model import load_cfe
    from fewshot.backbones import to_float
    from fewshot.io import file_sha256

    common = ["--cache", prepared.path["test"], "--tasks", 20, "--seed", 2, "--shots", 1]
    assert run_main("fewshot.baseline", [*common, "--out", tmp_path / "pixels"]).code == 0
    r = run_main("fewshot.baseline", [*common, "--out", tmp_path / "embedding", "--checkpoint", cfe_checkpoint,
                                      "--batch-size", 64, "--device", "cpu", "--threads", 1])
    assert r.code == 0, r.err
    assert "CFE embedding, nearest prototype (no meta-learning): 5-way 1-shot" in r.out
    pixels, emb = (load_json(tmp_path / d / "results" / "test_5w1s.json") for d in ("pixels", "embedding"))
    assert emb["method"] == "CFE embedding, nearest prototype (no meta-learning)"
    assert emb["checkpoint"] == str(cfe_checkpoint.resolve())
    assert emb["checkpoint_sha256"] == file_sha256(cfe_checkpoint)
    assert emb["checkpoint_epoch"] == 1 and emb["embedding_dim"] == 16 and emb["steps"] == 0
    assert emb["tasks_sha256"] == pixels["tasks_sha256"]  # the pixel baseline's (and maml.test's) tasks
    assert load_json(tmp_path / "embedding" / "config.json")["checkpoint"] == emb["checkpoint"]
    model = load_cfe(cfe_checkpoint)
    with torch.no_grad():
        Z = model.embed(to_float(torch.from_numpy(prepared.X["test"]))).numpy()
    assert np.allclose(np.linalg.norm(Z, axis=1), 1, atol=1e-5)
    tasks = sample_tasks(prepared.Y["test"], 5, 1, 5, 20, seed=2)
    assert emb["per_task_accuracy"] == pytest.approx([nearest_prototype_accuracy(Z, t) for t in tasks])


def test_an_embedding_of_other_images_is_one_line(cfe_checkpoint, tmp_path, run_main):
    from tests.conftest import make_prepared

    cache = make_prepared(tmp_path / "data", classes={"test": 6}, size=32)["test"][0]
    r = run_main("fewshot.baseline", ["--cache", cache, "--out", tmp_path / "e", "--checkpoint", cfe_checkpoint,
                                      "--device", "cpu"])
    assert r.code == 2 and "the checkpoint expects (28, 28, 1)" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_fewshot_baseline_does_not_import_cfe_to_start():
    import subprocess
    import sys

    from tests.conftest import REPO

    code = "import sys, fewshot.baseline; assert 'cfe' not in sys.modules and 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
