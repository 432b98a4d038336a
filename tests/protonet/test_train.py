"""protonet.train and protonet.test on the shared synthetic caches: training keeps the best val epoch and resumes
after SIGKILL to the weights of an uninterrupted run; the test draws maml.test's tasks, ignores unlabelled images
and resumes; bad input is one line."""

import json

import pytest
import torch

from fewshot.checkpoint import save_checkpoint
from fewshot.data import load_split
from fewshot.episodes import sample_tasks, tasks_sha256
from protonet import test as protonet_test
from protonet import train as protonet_train
from tests.conftest import assert_same, run_and_kill

TINY = ["--epochs", "3", "--tasks-per-epoch", "4", "--queries", "3", "--val-tasks", "4", "--hidden", "8",
        "--halve-every", "2", "--save-every", "2", "--threads", "1", "--device", "cpu"]
TEST = ["--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def pn_run(encoded, tmp_path_factory):
    out = tmp_path_factory.mktemp("protonet") / "run"
    protonet_train.main(["--caches", str(encoded.out), "--out", str(out), *TINY])
    return out


def test_training_keeps_the_best_val_epoch_and_halves_the_rate(pn_run, encoded):
    rows = [json.loads(line) for line in (pn_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["lr"] for r in rows] == [0.001, 0.001, 0.0005]
    best = torch.load(pn_run / "checkpoints/best.pt", weights_only=True)
    assert best["best_acc"] == max(r["val_acc"] for r in rows) and best["kind"] == "protonet"
    assert best["selection"] == "best val accuracy"
    assert sorted(p.name for p in (pn_run / "checkpoints").iterdir()) == ["best.pt", "epoch_0002.pt", "last.pt"]
    cfg = json.loads((pn_run / "config.json").read_text())
    assert cfg["learner"] == "protonet" and cfg["train_cache"] == str(encoded.path["train"])
    assert cfg["supervised"] is False and cfg["backbone"] == "conv4"


def test_a_killed_run_resumes_to_the_uninterrupted_weights(encoded, pn_run, tmp_path):
    out = tmp_path / "killed"
    argv = ["--caches", encoded.out, "--out", out, *TINY]
    run_and_kill("protonet.train", argv, out / "checkpoints" / "last.pt")
    protonet_train.main([str(a) for a in argv] + ["--resume"])
    a, b = (torch.load(r / "checkpoints/last.pt", weights_only=True) for r in (pn_run, out))
    assert a["epoch"] == b["epoch"] == 3
    for key in ("model", "optimizer", "scheduler", "best_acc"):
        assert_same(a[key], b[key], key)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_the_test_draws_maml_tests_tasks_and_ignores_unlabelled_images(pn_run, encoded):
    protonet_test.main(["--run", str(pn_run), "--tasks", "6", *TEST])
    protonet_test.main(["--run", str(pn_run), "--tasks", "6", "--unlabeled", "3", "--distractors", "1", "--batch",
                        "4", *TEST])
    plain = json.loads((pn_run / "results/test_5w1s.json").read_text())
    semi = json.loads((pn_run / "results/test_5w1s_3u1d.json").read_text())
    split = load_split(encoded.path["test"])
    assert plain["tasks_sha256"] == tasks_sha256(sample_tasks(split.labels, 5, 1, 5, 6, 0))  # maml.test's tasks
    assert semi["tasks_sha256"] == plain["tasks_sha256"] and (semi["unlabeled"], semi["distractors"]) == (3, 1)
    assert semi["per_task_accuracy"] == plain["per_task_accuracy"] and len(plain["per_task_accuracy"]) == 6
    assert plain["learner"] == "protonet" and plain["queries"] == 5 and plain["checkpoint_epoch"] >= 1
    assert plain["model_selection"] == "best val accuracy"


def test_a_killed_test_resumes_to_the_same_result(pn_run, tmp_path, monkeypatch):
    import fewshot.evaluation as evaluation

    monkeypatch.setattr(evaluation, "PARTIAL_EVERY", 2)
    argv = ["--run", str(pn_run), "--tasks", "5", "--output", str(tmp_path / "r.json"), *TEST]
    protonet_test.main(argv)
    whole = json.loads((tmp_path / "r.json").read_text())
    calls = {"n": 0}
    real = protonet_test.evaluate_tasks

    def dies_after_three(*a):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(protonet_test, "evaluate_tasks", dies_after_three)
    out = tmp_path / "k.json"
    with pytest.raises(KeyboardInterrupt):
        protonet_test.main([*argv[:-len(TEST) - 2], "--output", str(out), *TEST])
    assert len(json.loads(out.with_name("k.json.partial.json").read_text())["per_task_accuracy"]) == 3
    monkeypatch.setattr(protonet_test, "evaluate_tasks", real)
    protonet_test.main([*argv[:-len(TEST) - 2], "--output", str(out), *TEST])
    resumed = json.loads(out.read_text())
    assert resumed["resumed_after_tasks"] == 3 and resumed["per_task_accuracy"] == whole["per_task_accuracy"]


def test_supervised_reference_trains_on_the_true_labels(prepared, tmp_path):
    out = tmp_path / "sup"
    protonet_train.main(["--supervised", "--train-cache", str(prepared.path["train"]), "--test-cache",
                         str(prepared.path["test"]), "--out", str(out), *TINY, "--epochs", "1"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["supervised"] is True and cfg["learner"] == "protonet" and cfg["val_cache"] is None
    assert torch.load(out / "checkpoints/best.pt", weights_only=True)["selection"] == "last epoch (no val split)"
    protonet_test.main(["--run", str(out), "--tasks", "2", *TEST])
    assert json.loads((out / "results/test_5w1s.json").read_text())["tasks"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--ways", "11"], "11-way 1-shot tasks with 3 queries need 11 classes"),
    (["--backbone", "vit"], "invalid choice: 'vit'"),
    (["--halve-every", "-1"], "invalid nonneg_int value"),
])
def test_bad_training_input_is_one_line(encoded, tmp_path, run_main, extra, message):
    r = run_main("protonet.train", ["--caches", encoded.out, "--out", tmp_path / "r", *TINY, *extra])
    assert r.code == 2 and message in r.err and "Traceback" not in r.err
    assert not (tmp_path / "r").exists()


def test_other_runs_and_checkpoints_are_refused_by_the_test(pn_run, tmp_path, run_main):
    (tmp_path / "config.json").write_text(json.dumps({"learner": "ep"}))
    r = run_main("protonet.test", ["--run", tmp_path])
    assert r.code == 2 and "not a protonet.train run" in r.err
    save_checkpoint(tmp_path / "ep.pt", "ep", model={}, arch={}, epoch=1)
    r = run_main("protonet.test", ["--run", pn_run, "--checkpoint", tmp_path / "ep.pt", *TEST])
    assert r.code == 2 and "is a 'ep' checkpoint, expected 'protonet'" in r.err and len(r.err.splitlines()) == 1
