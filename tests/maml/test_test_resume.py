"""maml.test resumes a killed test: the accuracies of the tasks done so far are kept in a partial file beside the
result, a rerun with the same settings evaluates only the rest and ends with the uninterrupted result, bit for
bit; a rerun with other settings (or another checkpoint) starts over."""

import json

import pytest

from fewshot import evaluation
from maml import test as maml_test
from tests.maml.conftest import evaluate_run, results

TASKS, EVERY = 10, 4


@pytest.fixture
def counted(monkeypatch):
    """Counts maml.test's per-task evaluations; stop["after"] = N interrupts the test (as Ctrl-C would) at the
    (N+1)-th; what the partial file held at each evaluation is recorded."""
    evaluate, state = maml_test.evaluate_task, {"calls": 0, "after": None, "held": []}

    def evaluate_task(*args, **kwargs):
        if state["after"] is not None and state["calls"] >= state["after"]:
            raise KeyboardInterrupt
        partial = state.get("partial")
        state["held"].append(len(json.loads(partial.read_text())["per_task_accuracy"])
                             if partial and partial.exists() else 0)
        state["calls"] += 1
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(maml_test, "evaluate_task", evaluate_task)
    monkeypatch.setattr(evaluation, "PARTIAL_EVERY", EVERY)
    return state


def test_an_interrupted_test_continues_after_its_last_task_to_the_same_result(run_dir, tmp_path, counted):
    whole, out = tmp_path / "whole.json", tmp_path / "resumed.json"
    partial = tmp_path / "resumed.json.partial.json"
    evaluate_run(run_dir, "--tasks", TASKS, "--output", whole)
    assert counted["calls"] == TASKS and results(whole)["resumed_after_tasks"] == 0
    assert not (tmp_path / "whole.json.partial.json").exists()  # removed once the result is written
    counted.update(calls=0, after=7, partial=partial, held=[])
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(run_dir, "--tasks", TASKS, "--output", out)
    # written every EVERY tasks while it ran (what a SIGKILL would leave), and once more as it stopped
    assert counted["held"] == [0, 0, 0, 0, 4, 4, 4]
    assert len(json.loads(partial.read_text())["per_task_accuracy"]) == 7 and not out.exists()
    counted.update(calls=0, after=None)
    evaluate_run(run_dir, "--tasks", TASKS, "--output", out)
    assert counted["calls"] == TASKS - 7  # only the tasks left
    a, b = results(whole), results(out)
    assert b["resumed_after_tasks"] == 7
    for key in ("per_task_accuracy", "accuracy", "ci95", "tasks", "cache", "checkpoint", "seed"):
        assert a[key] == b[key], key
    assert not partial.exists()


@pytest.mark.parametrize("change", ["steps", "checkpoint"])
def test_a_rerun_with_other_settings_or_weights_starts_over(own_run, tmp_path, counted, change):
    out = tmp_path / "r.json"
    counted.update(after=5)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(own_run, "--tasks", TASKS, "--output", out)
    counted.update(calls=0, after=None)
    if change == "checkpoint":  # the same file name, other weights (e.g. the run trained on meanwhile)
        best = own_run / "checkpoints" / "best.pt"
        import torch

        ckpt = torch.load(best, weights_only=True)
        ckpt["model"] = {k: v + 0.01 for k, v in ckpt["model"].items()}
        torch.save(ckpt, best)
        evaluate_run(own_run, "--tasks", TASKS, "--output", out)
    else:
        evaluate_run(own_run, "--tasks", TASKS, "--output", out, "--steps", 3)
    assert counted["calls"] == TASKS and results(out)["resumed_after_tasks"] == 0
    assert not (tmp_path / "r.json.partial.json").exists()
