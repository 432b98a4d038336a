"""ep.train and ep.test on the shared synthetic caches: both stages run and resume after SIGKILL to the weights of
an uninterrupted run; ep.test draws maml.test's tasks, with and without unlabelled images; bad input is one line."""

import json

import pytest
import torch

from ep import test as ep_test
from ep import train as ep_train
from fewshot.evaluation import pick_tasks
from tests.conftest import assert_same, run_and_kill

TINY = ["--pretrain-epochs", "1", "--finetune-epochs", "2", "--batch-size", "64", "--tasks-per-epoch", "4",
        "--queries", "3", "--val-tasks", "4", "--hidden", "8", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def ep_run(encoded, tmp_path_factory):
    out = tmp_path_factory.mktemp("ep") / "run"
    ep_train.main(["--caches", str(encoded.out), "--out", str(out), *TINY])
    return out


def test_both_stages_run_and_the_best_val_epoch_is_kept(ep_run):
    rows = [json.loads(line) for line in (ep_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["pretrain", "finetune", "finetune"]
    assert rows[0]["lr"] == 0.1 and rows[1]["lr"] == 0.001
    best = torch.load(ep_run / "checkpoints/best.pt", weights_only=True)
    assert best["best_acc"] == max(r["val_acc"] for r in rows)
    assert json.loads((ep_run / "config.json").read_text())["learner"] == "ep"


def test_a_killed_run_resumes_to_the_uninterrupted_weights(encoded, ep_run, tmp_path):
    out = tmp_path / "killed"
    argv = ["--caches", encoded.out, "--out", out, *TINY]
    run_and_kill("ep.train", argv, out / "checkpoints" / "last.pt")
    ep_train.main([str(a) for a in argv] + ["--resume"])
    a, b = (torch.load(r / "checkpoints/last.pt", weights_only=True) for r in (ep_run, out))
    assert a["epoch"] == b["epoch"] == 3
    assert_same(a["model"], b["model"], "model")
    assert_same(a["optimizer"], b["optimizer"], "optimizer")


class Args:  # the task options of a test, as argparse gives them
    episodes = save_episodes = None
    ways, shots, queries, tasks, seed, distractors = 5, 1, 5, 6, 0, 0

    def __init__(self, unlabeled=0):
        self.unlabeled = unlabeled


def test_ep_test_draws_maml_tests_tasks_and_adds_unlabelled_images(ep_run, encoded):
    for unlabeled in (0, 3):
        ep_test.main(["--run", str(ep_run), "--tasks", "6", "--unlabeled", str(unlabeled), "--threads", "1",
                      "--device", "cpu"])
    plain = json.loads((ep_run / "results/test_5w1s.json").read_text())
    semi = json.loads((ep_run / "results/test_5w1s_3u.json").read_text())
    from fewshot.data import load_split
    from fewshot.episodes import tasks_sha256
    split = load_split(encoded.path["test"])
    tasks = pick_tasks(Args(), split, str(encoded.path["test"]), None, split.X.shape[1:], 5)[0]
    assert plain["tasks_sha256"] == semi["tasks_sha256"] == tasks_sha256(tasks)  # maml.test's tasks
    assert plain["queries"] == 5 and semi["unlabeled"] == 3 and len(plain["per_task_accuracy"]) == 6


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "5000"], "fewer than one batch of --batch-size 5000"),
    (["--backbone", "vit"], "invalid choice: 'vit'"),
    (["--pretrain-epochs", "0", "--finetune-epochs", "0"], "nothing to train"),
])
def test_bad_training_input_is_one_line(encoded, tmp_path, run_main, extra, message):
    r = run_main("ep.train", ["--caches", encoded.out, "--out", tmp_path / "r", *TINY, *extra])
    assert r.code == 2 and message in r.err and "Traceback" not in r.err
    assert not (tmp_path / "r").exists()


def test_a_maml_run_is_refused_by_ep_test(tmp_path, run_main):
    (tmp_path / "config.json").write_text(json.dumps({"pem": True}))
    r = run_main("ep.test", ["--run", tmp_path])
    assert r.code == 2 and "not an ep.train run" in r.err
