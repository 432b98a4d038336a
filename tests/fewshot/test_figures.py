"""fewshot.figures: each figure renders from in-memory data; the command draws a pipeline folder's four figures."""

import shutil

import numpy as np
import pytest

from fewshot.data import write_split
from fewshot.figures import (
    accuracy_lines,
    accuracy_vs_shots,
    cluster_sizes,
    embedding_map,
    pick,
    sizes,
    training_curves,
)
from fewshot.io import JsonlLog, load_json, save_json


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no temporary file left behind


def test_accuracy_vs_shots(tmp_path):
    fig = accuracy_vs_shots([{"label": "maml-pem", "shots": [1, 5, 20, 50], "accuracy": [0.5, 0.7, 0.8, 0.85],
                              "ci95": [0.01, 0.01, None, 0.005]},
                             {"label": "pixels", "shots": [1, 5], "accuracy": [0.4, 0.6], "ci95": [0.01, 0.01]}],
                            tmp_path / "a.png")
    assert_png(tmp_path / "a.png")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["maml-pem", "pixels"]


def test_training_curves_mark_pem_and_ep_stages(tmp_path):
    ep = [{"epoch": e, "loss": 3 - e / 5, "val_acc": 0.3 + e / 50, "stage": "pretrain" if e <= 4 else "finetune"}
          for e in range(1, 9)]
    runs = [{"label": "maml-pem", "pem": True, "rows": [{"epoch": e, "loss": 1 / e, "val_acc": 0.5} for e in (1, 2)]},
            {"label": "maml-nopem", "pem": False, "rows": [{"epoch": e, "loss": 1.2 / e} for e in (1, 2, 3)]},
            {"label": "ep", "pem": None, "rows": ep}]
    fig = training_curves(runs, tmp_path / "t.png")
    assert_png(tmp_path / "t.png")
    loss_ax, val_ax = fig.axes
    assert [line.get_linestyle() for line in loss_ax.lines[:2]] == ["-", "--"]
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == [
        "maml-pem (PEM on)", "maml-nopem (PEM off)", "ep"]
    stage_lines = [line for line in val_ax.lines if line.get_linestyle() == ":"]
    assert len(stage_lines) == 1 and list(stage_lines[0].get_xdata()) == [4.5, 4.5]  # fine-tuning from epoch 5


def test_pick_says_what_it_leaves_out():
    labels = np.repeat(np.arange(30), 10)
    idx, note = pick(labels, max_classes=20, max_points=50, seed=0)
    assert len(idx) == 50 and labels[idx].max() < 20
    assert note == "first 20 of 30 classes, random sample of 50 of 200 points (seed 0)"
    assert np.array_equal(idx, pick(labels, 20, 50, seed=0)[0])  # seeded
    idx, note = pick(labels[:40], max_classes=20, max_points=50)
    assert len(idx) == 40 and note == "4 classes, all 40 points"


def test_embedding_map_states_the_sample_in_its_titles(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(25), 8)
    Z = rng.normal(size=(200, 8)) + labels[:, None]
    idx, note = pick(labels, max_points=60)
    fig = embedding_map([(f"test\n{note}", Z[idx], labels[idx]), ("train", Z[:3], labels[:3])], tmp_path / "e.png")
    assert_png(tmp_path / "e.png")
    assert fig.axes[0].get_title() == "test\nfirst 20 of 25 classes, random sample of 60 of 160 points (seed 0)"


def test_cluster_sizes_count_each_image_once(tmp_path):
    # images 0-2 in cluster 0, 3 in cluster 1 (repeated to 3 rows), 4-5 in cluster 2; true classes 7 (0-3), 8 (4-5)
    index = np.array([0, 1, 2, 3, 3, 3, 4, 5])
    label = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    Y = np.array([7, 7, 7, 7, 8, 8])[index]
    write_split(tmp_path / "train.npz", np.zeros((8, 4, 4, 1), np.uint8), Y, cluster_label=label, index=index)
    pseudo, true = sizes(tmp_path / "train.npz")
    assert pseudo.tolist() == [3, 1, 2] and true.tolist() == [4, 2]
    cluster_sizes(pseudo, true, tmp_path / "c.png", min_size=3)
    assert_png(tmp_path / "c.png")


def make_pipeline(root, encoded, checkpoint=None):
    """A pipeline folder: the encoded caches (encode.json's checkpoint replaced by `checkpoint` if given), two MAML
    runs (PEM on, off) and an EP run with metrics and test results, and the pixel baseline's results."""
    shutil.copytree(encoded.out, root / "caches")
    if checkpoint is not None:
        save_json(root / "caches" / "encode.json", {**load_json(root / "caches" / "encode.json"),
                                                     "checkpoint": str(checkpoint)})
    runs = {"maml-pem": {"pem": True}, "maml-nopem": {"pem": False}, "ep": {"learner": "ep"},
            "pixels": {"method": "raw pixels"}}
    for i, (name, cfg) in enumerate(runs.items()):
        save_json(root / name / "config.json", cfg)
        for e in range(1, 5):
            if name != "pixels":
                JsonlLog(root / name / "metrics.jsonl").write(epoch=e, loss=1 / e, val_acc=0.4 + e / 20, seconds=1,
                                                              **({"stage": "pretrain" if e < 3 else "finetune"}
                                                                 if name == "ep" else {}))
        for shots in (1, 5, 20):
            save_json(root / name / "results" / f"test_5w{shots}s.json",
                      {"ways": 5, "shots": shots, "accuracy": 0.5 + shots / 100 + i / 50, "ci95": 0.01, "tasks": 100})


def test_runs_with_only_val_results_are_drawn_from_them(tmp_path, run_main):
    for name, split in (("maml-pem", "val"), ("maml-nopem", "test"), ("maml-nopem", "val")):
        save_json(tmp_path / name / "config.json", {"pem": name == "maml-pem"})
        for shots in (1, 5):
            save_json(tmp_path / name / "results" / f"{split}_5w{shots}s.json",
                      {"ways": 5, "shots": shots, "accuracy": 0.5, "ci95": 0.01, "tasks": 10})
    lines = accuracy_lines([tmp_path], lambda p: "")
    assert [(line["label"], line["shots"]) for line in lines] == [
        ("maml-nopem: MAML (PEM off)", [1, 5]), ("maml-pem: MAML + PEM (val)", [1, 5])]
    r = run_main("fewshot.figures", [tmp_path])  # no metrics, no caches: one figure, and notes for the others
    assert r.code == 0 and sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["accuracy_vs_shots.png"]
    assert "training_curves.png skipped" in r.out and "embedding_map.png and cluster_sizes.png skipped" in r.out


FIGURES = ("accuracy_vs_shots.png", "training_curves.png", "embedding_map.png", "cluster_sizes.png")


def test_cli_writes_all_four_figures(tmp_path, encoded, run_main):
    make_pipeline(tmp_path, encoded)
    r = run_main("fewshot.figures", [tmp_path, "--max-points", 60])
    assert r.code == 0, r.err
    for name in FIGURES:
        assert_png(tmp_path / "figures" / name)
        assert f"  {tmp_path / 'figures' / name}" in r.out.splitlines()
    assert "test embeddings by true class: 10 classes, random sample of 60 of 200 points (seed 0)" in r.out
    assert "train embeddings by pseudo-label: 10 classes, random sample of 60 of 800 points (seed 0)" in r.out


def test_missing_checkpoint_skips_the_map_and_a_folder_of_pipelines_prefixes_names(tmp_path, encoded, run_main):
    for name in ("a", "b"):
        make_pipeline(tmp_path / name, encoded, checkpoint=tmp_path / "gone.pt")
    r = run_main("fewshot.figures", [tmp_path, "--out", tmp_path / "out"])
    assert r.code == 0, r.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_cluster_sizes.png", "accuracy_vs_shots.png", "b_cluster_sizes.png", "training_curves.png"]
    assert f"note: the CFE checkpoint {tmp_path / 'gone.pt'}" in r.out and "a_embedding_map.png skipped" in r.out


def test_bad_input_is_one_line(tmp_path, run_main):
    r = run_main("fewshot.figures", [tmp_path / "nowhere"])
    assert r.code == 2 and r.err == f"error: {tmp_path / 'nowhere'}: no such folder\n"
    save_json(tmp_path / "maml-pem" / "config.json", {"pem": True})  # a run, but no results
    r = run_main("fewshot.figures", [tmp_path])
    assert r.code == 2 and r.err.startswith("error: ") and "no run folders with results" in r.err
    assert r.err.count("\n") == 1 and not (tmp_path / "figures").exists()


@pytest.mark.parametrize("bad", [[1, 2], "text"])
def test_metrics_that_are_not_objects_are_a_user_error(tmp_path, run_main, bad):
    save_json(tmp_path / "maml-pem" / "config.json", {"pem": True})
    save_json(tmp_path / "maml-pem" / "results" / "test_5w1s.json",
              {"ways": 5, "shots": 1, "accuracy": 0.5, "ci95": 0.01, "tasks": 10})
    JsonlLog(tmp_path / "maml-pem" / "metrics.jsonl").write(epoch=1, loss=1.0)
    with open(tmp_path / "maml-pem" / "metrics.jsonl", "a") as f:
        f.write(f"{bad!r}\n".replace("'", '"'))
    r = run_main("fewshot.figures", [tmp_path])
    assert r.code == 2 and r.err.startswith("error: ") and "metrics.jsonl" in r.err and r.err.count("\n") == 1
    assert not (tmp_path / "figures").exists()  # everything is read before anything is drawn
