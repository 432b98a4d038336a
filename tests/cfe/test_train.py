"""cfe.train: an interrupted and resumed run ends bit-identical to an uninterrupted one; reruns into an existing
run folder need --resume with the same settings; a non-finite loss stops the run with a clear error."""

import json

import numpy as np
import pytest
import torch

from cfe import train
from cfe.train import cosine_lr, load_cfe
from fewshot.checkpoint import load_checkpoint
from fewshot.errors import UserError
from fewshot.io import read_jsonl
from tests.conftest import files_under

EPOCHS = 3


def args(data, out, *extra):
    # 800 images, batch 64: 12 steps per epoch; a 256-key queue wraps around within the first epoch
    return ["--data", str(data), "--out", str(out), "--epochs", str(EPOCHS), "--batch-size", "64",
            "--queue-size", "256", "--hidden", "8", "--dim", "16", "--save-every", "2", "--device", "cpu",
            "--threads", "1", *map(str, extra)]


@pytest.fixture(scope="module")
def runs(images_only, tmp_path_factory):
    root = tmp_path_factory.mktemp("cfe_runs")
    whole, halted = root / "whole", root / "halted"
    train.main(args(images_only, whole))
    train.main(args(images_only, halted, "--halt-after", 1))
    after_halt = load_checkpoint(halted / "checkpoints" / "last.pt", "cfe")
    train.main(args(images_only, halted, "--resume"))
    return whole, halted, after_halt


def test_halt_after_stops_with_a_checkpoint_of_that_epoch(runs):
    _, _, after_halt = runs
    assert after_halt["epoch"] == 1


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(runs):
    whole, halted, after_halt = runs
    a = load_checkpoint(whole / "checkpoints" / "last.pt", "cfe")
    b = load_checkpoint(halted / "checkpoints" / "last.pt", "cfe")
    assert a["epoch"] == b["epoch"] == EPOCHS
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["model"]["queue_ptr"].item() == (EPOCHS * 12 * 64) % 256
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # and training did something: the weights moved away from the first epoch's
    first_conv = "encoder_q.0.blocks.0.0.weight"
    assert not torch.equal(a["model"][first_conv], after_halt["model"][first_conv])


def test_metrics_log_has_each_epoch_once_and_snapshots_follow_save_every(runs):
    whole, halted, _ = runs
    for run in (whole, halted):
        rows = read_jsonl(run / "metrics.jsonl")
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        assert all(np.isfinite(r["loss"]) for r in rows)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0002.pt", "epoch_0003.pt", "last.pt"]
    losses = [[r["loss"] for r in read_jsonl(run / "metrics.jsonl")] for run in (whole, halted)]
    assert losses[0] == losses[1]
    cfg = json.loads((whole / "config.json").read_text())
    assert cfg["batch_size"] == 64 and "git_commit" in cfg and "versions" in cfg


def test_checkpoint_loads_as_a_model(runs):
    whole, _, _ = runs
    model = load_cfe(whole / "checkpoints" / "last.pt")
    assert not model.training and model.arch["dim"] == 16
    assert model.embed(torch.zeros(2, 1, 28, 28)).shape == (2, 16)


def test_rerun_into_an_existing_run_without_resume_is_refused(runs, images_only):
    whole, _, _ = runs
    before = files_under(whole)
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        train.main(args(images_only, whole))
    assert files_under(whole) == before


def test_resume_with_other_settings_is_refused(runs, images_only):
    whole, _, _ = runs
    before = files_under(whole)
    with pytest.raises(UserError, match="differ .*lr"):
        train.main(args(images_only, whole, "--resume", "--lr", "0.1"))
    assert files_under(whole) == before


def test_resume_may_keep_snapshots_at_another_interval(runs, images_only, tmp_path):
    whole, _, _ = runs
    run = tmp_path / "run"
    train.main(args(images_only, run, "--halt-after", 1))
    train.main(args(images_only, run, "--resume", "--save-every", 3))  # the last --save-every wins
    # every 3 epochs from the resume on (the final epoch always), not every 2: no epoch_0002.pt
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0003.pt", "last.pt"]
    assert [row["save_every"] for row in read_jsonl(run / "invocations.jsonl")] == [2, 3]
    a = load_checkpoint(whole / "checkpoints" / "last.pt", "cfe")["model"]
    b = load_checkpoint(run / "checkpoints" / "last.pt", "cfe")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)  # the interval changes no result


def test_step_settings_below_one_are_refused():
    with pytest.raises(UserError, match="must be >= 1"):
        train.check_step_settings(0, 8, 1)


def test_resume_with_more_epochs_is_refused_as_it_would_change_the_schedule(runs, images_only):
    whole, _, _ = runs
    before = files_under(whole)
    with pytest.raises(UserError, match="differ .*epochs"):
        train.main(args(images_only, whole, "--resume", "--epochs", EPOCHS + 2))
    assert files_under(whole) == before


def test_non_finite_loss_is_a_clear_error(images_only, tmp_path, monkeypatch):
    monkeypatch.setattr("cfe.model.cfe_loss", lambda q, k, queue, t, groups: (q * float("nan")).sum())
    with pytest.raises(UserError, match="non-finite loss .* epoch 1 step 0") as caught:
        train.main(args(images_only, tmp_path / "run", "--epochs", 1))
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert "checkpoint" not in str(caught.value)  # none to point to yet


def test_a_run_killed_between_its_final_writes_resumes_to_its_final_snapshot(runs, images_only, tmp_path,
                                                                            monkeypatch):
    whole, _, _ = runs
    run, save = tmp_path / "run", train.save_checkpoint

    def killed_at_the_final_last_pt(path, kind, **state):
        if path.name == "last.pt" and state["epoch"] == EPOCHS:
            raise KeyboardInterrupt
        save(path, kind, **state)

    monkeypatch.setattr(train, "save_checkpoint", killed_at_the_final_last_pt)
    with pytest.raises(KeyboardInterrupt):
        train.main(args(images_only, run))
    monkeypatch.setattr(train, "save_checkpoint", save)
    train.main(args(images_only, run, "--resume"))  # redoes the final epoch from the previous last.pt
    final = load_checkpoint(run / "checkpoints" / f"epoch_{EPOCHS:04d}.pt", "cfe")["model"]
    for ckpt in (run / "checkpoints" / "last.pt", whole / "checkpoints" / "last.pt"):
        other = load_checkpoint(ckpt, "cfe")["model"]
        assert all(torch.equal(final[name], other[name]) for name in final)


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", 300], "must not exceed --queue-size"),
    (["--bn-splits", 3], "must be >= 1 and divide --batch-size 64"),
    (["--per-split-loss"], "--per-split-loss needs --bn-splits of 2 or more"),
    (["--batch-size", 1024, "--queue-size", 1024], "800 images, fewer than one batch"),
])
def test_impossible_settings_are_refused_before_the_run_folder_exists(images_only, tmp_path, extra, message):
    with pytest.raises(UserError, match=message):
        train.main(args(images_only, tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value, kind", [
    ("--lr", "-0.1", "positive_float"),
    ("--lr", "0", "positive_float"),
    ("--momentum", "-0.9", "nonneg_float"),
    ("--weight-decay", "nan", "nonneg_float"),
    ("--key-momentum", "1.5", "unit_float"),
    ("--temperature", "0", "positive_float"),  # the logits are divided by it
    ("--seed", "-1", "seed_int"),
])
def test_impossible_rates_are_usage_errors_before_anything_is_written(images_only, tmp_path, capsys, option, value,
                                                                      kind):
    with pytest.raises(SystemExit) as info:
        train.main(args(images_only, tmp_path / "run", option, value))
    assert info.value.code == 2
    assert f"argument {option}: invalid {kind} value: '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cosine_schedule():
    assert cosine_lr(0.03, 0, 10) == pytest.approx(0.03)
    assert cosine_lr(0.03, 5, 10) == pytest.approx(0.015)
    assert cosine_lr(0.03, 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(0.03, 7, 10, cos=False) == 0.03


def test_split_batchnorm_run_resumes_bit_identically_and_loads(images_only, tmp_path):
    whole, halted = tmp_path / "whole", tmp_path / "halted"
    train.main(args(images_only, whole, "--epochs", 2, "--bn-splits", 4))
    train.main(args(images_only, halted, "--epochs", 2, "--bn-splits", 4, "--halt-after", 1))
    train.main(args(images_only, halted, "--epochs", 2, "--bn-splits", 4, "--resume"))
    a = load_checkpoint(whole / "checkpoints" / "last.pt", "cfe")
    b = load_checkpoint(halted / "checkpoints" / "last.pt", "cfe")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert load_cfe(whole / "checkpoints" / "last.pt").bn_splits == 4
    with pytest.raises(UserError, match="differ .*: bn_splits"):
        train.main(args(images_only, halted, "--epochs", 2, "--bn-splits", 2, "--resume"))


def test_crop_mode_is_recorded_and_older_runs_resume_as_clamped(images_only, tmp_path):
    tv, old = tmp_path / "tv", tmp_path / "old"
    train.main(args(images_only, tv, "--epochs", 2, "--halt-after", 1, "--crop", "torchvision"))
    assert json.loads((tv / "config.json").read_text())["crop"] == "torchvision"
    with pytest.raises(UserError, match="differ .*: crop"):
        train.main(args(images_only, tv, "--epochs", 2, "--resume"))  # the default, clamped
    # a run folder written before --crop existed used the clamped boxes, so it resumes with the default
    train.main(args(images_only, old, "--epochs", 2, "--halt-after", 1))
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt", "cfe")["model"] for r in (tv, old))
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the crop mode reaches the training step
    cfg = json.loads((old / "config.json").read_text())
    del cfg["crop"]
    (old / "config.json").write_text(json.dumps(cfg))
    train.main(args(images_only, old, "--epochs", 2, "--resume"))
    with pytest.raises(UserError, match="differ .*: crop"):
        train.main(args(images_only, old, "--epochs", 2, "--crop", "torchvision", "--resume"))


def test_per_split_loss_is_in_the_checkpoint_and_changes_training(images_only, tmp_path):
    split, whole = tmp_path / "split", tmp_path / "whole"
    train.main(args(images_only, split, "--epochs", 1, "--bn-splits", 4, "--per-split-loss"))
    train.main(args(images_only, whole, "--epochs", 1, "--bn-splits", 4))
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt", "cfe") for r in (split, whole))
    assert a["arch"]["per_split_loss"] is True and "per_split_loss" not in b["arch"]
    assert load_cfe(split / "checkpoints" / "last.pt").loss_groups == 4
    assert not all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    with pytest.raises(UserError, match="differ .*: per_split_loss"):
        train.main(args(images_only, whole, "--epochs", 1, "--bn-splits", 4, "--per-split-loss", "--resume"))


def test_progress_bar_is_not_redrawn_every_step(images_only, tmp_path, capsys):
    """A fast device runs an epoch's 12 steps well inside tqdm's 2 s redraw interval: the bar is drawn when it
    opens and closes, not once per step (which made GPU logs a line per step)."""
    train.main(args(images_only, tmp_path / "run", "--epochs", 1))
    err = capsys.readouterr().err
    assert "cfe epoch 1/1" in err
    assert err.count("\r") < 6, err.count("\r")


def test_images_too_small_for_the_network_are_refused_before_the_run_folder_exists(tmp_path):
    from fewshot import io as fio

    data = tmp_path / "small.npz"
    fio.save_npz(data, X=np.zeros((128, 8, 8, 1), dtype=np.uint8))
    with pytest.raises(UserError, match="8x8 images are too small .*at least 16x16"):
        train.main(args(data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()
