"""maml.test --checkpoint best@N: the epoch a run of N epochs would select, tested from a longer run's snapshots."""

import json
import re
from pathlib import Path

import pytest

from fewshot.checkpoint import save_checkpoint
from fewshot.errors import UserError
from maml.selection import budget_snapshot
from tests.maml.conftest import evaluate_run, results


def test_best_within_a_budget_is_the_snapshot_a_shorter_run_would_select(own_run):
    """--checkpoint best@N tests the snapshot of the epoch a run of N epochs would have selected, under its own
    result name; here the run has no val split, so that is epoch N (maml.train's tests check the val choice)."""
    ckpts = own_run / "checkpoints"
    (ckpts / "epoch_0001.pt").write_bytes((ckpts / "last.pt").read_bytes())  # the 1-epoch run's snapshot
    evaluate_run(own_run, "--tasks", 3, "--checkpoint", "best@1")
    evaluate_run(own_run, "--tasks", 3, "--checkpoint", ckpts / "epoch_0001.pt")
    res = results(own_run / "results" / "test_5w1s_best@1.json")
    assert res["checkpoint"] == str(ckpts / "epoch_0001.pt") and res["checkpoint_epoch"] == 1
    assert res["model_selection"] == "the selection within the first 1 epochs (epoch_0001.pt)"
    assert res["per_task_accuracy"] == results(own_run / "results" / "test_5w1s_epoch_0001.json")["per_task_accuracy"]
    assert not (own_run / "results" / "test_5w1s.json").exists()


def budget_run(root: Path, val_accs, snapshots) -> tuple[Path, dict]:
    """A run folder holding only what best@N reads: metrics rows, (empty) snapshot files and the config."""
    (root / "checkpoints").mkdir(parents=True)
    rows = [{"epoch": e, "val_acc": v} for e, v in enumerate(val_accs, 1)]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for e in snapshots:
        (root / "checkpoints" / f"epoch_{e:04d}.pt").touch()
    return root, {"save_every": 2}


def test_best_within_a_budget_takes_the_highest_val_accuracy_the_later_on_ties(tmp_path):
    run, cfg = budget_run(tmp_path, [0.6, 0.9, 0.8, 0.9, 0.7], snapshots=range(1, 6))
    assert [budget_snapshot(run, cfg, n)[1] for n in range(1, 6)] == [1, 2, 2, 4, 4]


def test_best_within_a_budget_falls_back_on_best_or_last_when_they_hold_the_epoch(tmp_path):
    run, cfg = budget_run(tmp_path, [0.6, 0.9, 0.8, 0.7], snapshots=[])
    save_checkpoint(run / "checkpoints" / "best.pt", "maml", epoch=2)
    save_checkpoint(run / "checkpoints" / "last.pt", "maml", epoch=4)
    assert budget_snapshot(run, cfg, 4) == (run / "checkpoints" / "best.pt", 2)
    run, cfg = budget_run(tmp_path / "later", [0.6, 0.9, 0.8, 0.95], snapshots=[])
    save_checkpoint(run / "checkpoints" / "last.pt", "maml", epoch=4)
    assert budget_snapshot(run, cfg, 4) == (run / "checkpoints" / "last.pt", 4)
    with pytest.raises(UserError, match="best@3 selects epoch 2, whose snapshot the run did not keep"):
        budget_snapshot(run, cfg, 3)  # last.pt holds epoch 4, not 2


@pytest.mark.parametrize("val_accs, snapshots, budget, message", [
    ([0.6, 0.9], [1, 2], 3, "holds 2 epochs; best@3 needs epochs 1 to 3"),
    ([0.6, 0.7, 0.9, 0.8], [2, 4], 4, "best@4 selects epoch 3"),
    ([0.9, 0.6], [2], 2, "best@2 selects epoch 1, whose snapshot the run did not keep (it kept every 2)"),
    ([0.6, "x"], [1, 2], 2, "a val_acc among epochs 1 to 2 is not a number"),
])
def test_best_within_a_budget_refuses_what_it_cannot_select(tmp_path, val_accs, snapshots, budget, message):
    run, cfg = budget_run(tmp_path, val_accs, snapshots)
    with pytest.raises(UserError, match=re.escape(message)):
        budget_snapshot(run, cfg, budget)


def test_best_within_a_budget_needs_the_metrics(own_run, run_main):
    (own_run / "metrics.jsonl").unlink()
    res = run_main("maml.test", ["--run", own_run, "--checkpoint", "best@1", "--threads", 1, "--device", "cpu"])
    assert res.code != 0 and res.err.startswith("error: ") and "metrics.jsonl: not found; best@N reads" in res.err
    assert len(res.err.strip().splitlines()) == 1 and not (own_run / "results").exists()


def test_a_snapshot_holding_another_epoch_is_refused(own_run, run_main):
    metrics = own_run / "metrics.jsonl"
    row = json.loads(metrics.read_text().splitlines()[0])
    metrics.write_text(metrics.read_text() + json.dumps({**row, "epoch": 2}) + "\n")  # as if trained 2 epochs
    ckpts = own_run / "checkpoints"
    (ckpts / "epoch_0002.pt").write_bytes((ckpts / "last.pt").read_bytes())  # holds epoch 1
    res = run_main("maml.test", ["--run", own_run, "--checkpoint", "best@2", "--threads", 1, "--device", "cpu"])
    assert res.code != 0 and "epoch_0002.pt: holds epoch 1, not 2 as its name says" in res.err
    assert not (own_run / "results").exists()
