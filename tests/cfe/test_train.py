"""cfe.train: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one; the cosine schedule
is the library's and equals moco's formula; reruns into an existing run folder need --resume with the same
settings; bad settings and a non-finite loss stop the run with a clear error."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cfe import train
from cfe.model import load_cfe
from fewshot.checkpoint import load_checkpoint
from fewshot.errors import UserError
from fewshot.io import read_jsonl
from tests.conftest import assert_same, files_under, run_and_kill

EPOCHS = 4
CHECKPOINT_KEYS = {"kind", "arch", "model", "optimizer", "scheduler", "epoch", "config", "provenance"}


def args(data, out, *extra):
    # 800 images, batch 64 in the default 4 BatchNorm splits: 12 steps per epoch; a 256-key queue wraps around
    # within the first epoch
    return ["--data", str(data), "--out", str(out), "--epochs", str(EPOCHS), "--batch-size", "64",
            "--queue-size", "256", "--hidden", "8", "--dim", "16", "--save-every", "2", "--device", "cpu",
            "--threads", "1", *map(str, extra)]


def last(run) -> dict:
    return load_checkpoint(Path(run) / "checkpoints" / "last.pt", "cfe")


def stopped_after(run, epoch, dest) -> Path:
    """The folder that the finished `run`'s command, given --out dest, leaves when it is stopped right after
    `epoch`: a copy of `run` with that epoch's snapshot (the same state its last.pt held then) as last.pt, no later
    snapshot or metrics row, and dest as the recorded --out."""
    shutil.copytree(run, dest)
    ckpts = dest / "checkpoints"
    shutil.copyfile(ckpts / f"epoch_{epoch:04d}.pt", ckpts / "last.pt")
    for p in ckpts.glob("epoch_*.pt"):
        if int(p.stem.split("_")[1]) > epoch:
            p.unlink()
    rows = [r for r in read_jsonl(dest / "metrics.jsonl") if r["epoch"] <= epoch]
    (dest / "metrics.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, "out": str(dest)}))
    return dest


@pytest.fixture(scope="module")
def runs(images_only, tmp_path_factory):
    """whole: uninterrupted; killed: SIGKILLed after its first checkpoint, then resumed (killed_at: its epoch then,
    killed_rows: its metrics then)."""
    root = tmp_path_factory.mktemp("cfe_runs")
    whole, killed = root / "whole", root / "killed"
    train.main(args(images_only, whole))
    run_and_kill("cfe.train", args(images_only, killed), killed / "checkpoints" / "last.pt")
    killed_at = last(killed)["epoch"]
    killed_rows = read_jsonl(killed / "metrics.jsonl")
    train.main(args(images_only, killed, "--resume"))
    return whole, killed, killed_at, killed_rows


def test_a_killed_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(runs):
    whole, killed, killed_at, killed_rows = runs
    assert 1 <= killed_at < EPOCHS  # the kill landed with epochs left to run
    # nothing past the last checkpoint is kept: at most the epoch being saved when it died was logged beyond it
    assert [r["epoch"] for r in killed_rows] in ([*range(1, killed_at + 1)], [*range(1, killed_at + 2)])
    a, b = last(whole), last(killed)
    assert set(a) == set(b) == CHECKPOINT_KEYS
    assert a["epoch"] == b["epoch"] == EPOCHS
    for key in ("arch", "model", "optimizer", "scheduler"):
        assert_same(a[key], b[key], key)
    assert a["model"]["queue_ptr"].item() == (EPOCHS * 12 * 64) % 256
    # every epoch logged once, with the uninterrupted run's losses; no temporary file left behind
    def logged(run):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(run / "metrics.jsonl")]
    assert logged(killed) == logged(whole)
    assert [r["resumed"] for r in read_jsonl(killed / "invocations.jsonl")] == [False, True]
    assert not [p for p in killed.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_training_moves_the_weights_and_keeps_the_snapshots_save_every_asks_for(runs):
    whole, _, _, _ = runs
    first, final = (load_checkpoint(whole / "checkpoints" / f"epoch_{e:04d}.pt", "cfe") for e in (2, EPOCHS))
    conv = "encoder_q.0.blocks.0.0.weight"
    assert not torch.equal(first["model"][conv], final["model"][conv])
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == ["epoch_0002.pt", "epoch_0004.pt", "last.pt"]
    rows = read_jsonl(whole / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)


def test_config_records_the_settings_and_provenance(runs):
    whole, _, _, _ = runs
    cfg = json.loads((whole / "config.json").read_text())
    assert cfg["batch_size"] == 64 and cfg["bn_splits"] == 4 and "git_commit" in cfg and "versions" in cfg
    ckpt = last(whole)
    assert ckpt["config"]["image_shape"] == [28, 28, 1] and "git_commit" in ckpt["provenance"]


def test_the_schedule_is_torchs_cosine_annealing_with_moco_values():
    """CosineAnnealingLR stepped once per epoch with T_max = epochs gives moco's per-epoch cosine (main_moco.py
    adjust_learning_rate with --cos): lr * 0.5 * (1 + cos(pi * epoch / epochs)); its state resumes it exactly."""
    epochs, base = 10, 0.03
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], base)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [base * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)]
    assert lrs == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert lrs[0] == base and lrs[5] == pytest.approx(base / 2, rel=1e-12)


def test_the_run_logs_the_cosine_rates_and_saves_the_schedule(runs):
    whole, _, _, _ = runs
    logged = [r["lr"] for r in read_jsonl(whole / "metrics.jsonl")]
    assert logged == pytest.approx([0.03 * 0.5 * (1 + math.cos(math.pi * e / EPOCHS)) for e in range(EPOCHS)],
                                   rel=1e-12)
    sched = last(whole)["scheduler"]
    assert sched["last_epoch"] == EPOCHS and sched["T_max"] == EPOCHS


def test_checkpoint_loads_as_a_model(runs):
    whole, _, _, _ = runs
    model = load_cfe(whole / "checkpoints" / "last.pt")
    assert not model.training and model.arch["dim"] == 16 and model.bn_splits == 4
    assert model.embed(torch.zeros(2, 1, 28, 28)).shape == (2, 16)


def test_one_batchnorm_split_trains_another_model_and_cannot_resume_a_four_split_run(runs, images_only, tmp_path):
    whole, _, _, _ = runs
    one, four = tmp_path / "one", tmp_path / "four"
    train.main(args(images_only, one, "--epochs", 1, "--bn-splits", 1))
    train.main(args(images_only, four, "--epochs", 1))
    a, b = last(one), last(four)
    assert a["arch"]["bn_splits"] == 1 and load_cfe(one / "checkpoints" / "last.pt").bn_splits == 1
    conv = "encoder_q.0.blocks.0.0.weight"
    assert not torch.equal(a["model"][conv], b["model"][conv])  # the setting reaches the training step
    before = files_under(whole)
    with pytest.raises(UserError, match="differ .*: bn_splits"):
        train.main(args(images_only, whole, "--bn-splits", 1, "--resume"))
    assert files_under(whole) == before


def test_rerun_into_an_existing_run_without_resume_is_refused(runs, images_only):
    whole, _, _, _ = runs
    before = files_under(whole)
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        train.main(args(images_only, whole))
    assert files_under(whole) == before


@pytest.mark.parametrize("extra, changed", [
    (["--lr", "0.1"], "lr"),
    (["--epochs", EPOCHS + 2], "epochs"),  # the cosine schedule depends on it
])
def test_resume_with_other_settings_is_refused(runs, images_only, extra, changed):
    whole, _, _, _ = runs
    before = files_under(whole)
    with pytest.raises(UserError, match=f"differ .*{changed}"):
        train.main(args(images_only, whole, "--resume", *extra))
    assert files_under(whole) == before


def test_resume_may_keep_snapshots_at_another_interval(runs, tmp_path, images_only):
    whole, _, _, _ = runs
    run = stopped_after(whole, 2, tmp_path / "run")
    train.main(args(images_only, run, "--resume", "--save-every", 3))  # the last --save-every wins
    # epoch 3 is a multiple of 3 (not of 2), epoch 4 the final one
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_0002.pt", "epoch_0003.pt", "epoch_0004.pt", "last.pt"]
    assert [row["save_every"] for row in read_jsonl(run / "invocations.jsonl")] == [2, 3]
    assert_same(last(whole)["model"], last(run)["model"])  # the interval changes no result


def test_a_run_killed_between_its_final_writes_resumes_to_its_final_snapshot(runs, images_only, tmp_path,
                                                                            monkeypatch):
    whole, _, _, _ = runs
    run = stopped_after(whole, 2, tmp_path / "run")
    save = train.save_checkpoint

    def killed_at_the_final_last_pt(path, kind, **state):
        if path.name == "last.pt" and state["epoch"] == EPOCHS:
            raise KeyboardInterrupt
        save(path, kind, **state)

    monkeypatch.setattr(train, "save_checkpoint", killed_at_the_final_last_pt)
    with pytest.raises(KeyboardInterrupt):
        train.main(args(images_only, run, "--resume"))
    monkeypatch.setattr(train, "save_checkpoint", save)
    assert last(run)["epoch"] == EPOCHS - 1
    train.main(args(images_only, run, "--resume"))  # redoes the final epoch from the previous last.pt
    final = load_checkpoint(run / "checkpoints" / f"epoch_{EPOCHS:04d}.pt", "cfe")
    for other in (last(run), last(whole)):
        assert_same(final["model"], other["model"])
        assert_same(final["optimizer"], other["optimizer"])


def test_resume_of_a_checkpoint_without_the_schedule_is_a_clear_error(runs, images_only, tmp_path):
    whole, _, _, _ = runs
    run = stopped_after(whole, 2, tmp_path / "run")
    ckpt = last(run)
    del ckpt["scheduler"]
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    with pytest.raises(UserError, match="cfe checkpoint without 'scheduler'"):
        train.main(args(images_only, run, "--resume"))


def test_step_settings_below_one_are_refused():
    with pytest.raises(UserError, match="must be >= 1"):
        train.check_step_settings(0, 8, 1)


def test_non_finite_loss_is_a_clear_error(images_only, tmp_path, monkeypatch):
    monkeypatch.setattr("cfe.model.cfe_loss", lambda q, k, queue, t, groups: (q * float("nan")).sum())
    with pytest.raises(UserError, match="non-finite loss .* epoch 1 step 0") as caught:
        train.main(args(images_only, tmp_path / "run", "--epochs", 1))
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert "checkpoint" not in str(caught.value)  # none to point to yet


def test_defaults_are_the_papers_and_removed_options_are_gone():
    parsed = train.get_parser().parse_args(["--data", "x", "--out", "y"])
    assert (parsed.bn_splits, parsed.queue_size, parsed.batch_size, parsed.epochs) == (4, 16384, 256, 200)
    assert (parsed.lr, parsed.temperature, parsed.key_momentum, parsed.dim) == (0.03, 0.2, 0.999, 64)
    for gone in ("--per-split-loss", "--crop", "--halt-after", "--no-cos"):
        with pytest.raises(SystemExit):
            train.get_parser().parse_args(["--data", "x", "--out", "y", gone])


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", 300], "must not exceed --queue-size"),
    (["--bn-splits", 3], "must be >= 1 and divide --batch-size 64"),
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


def test_colour_images_train_with_moco_v2_views(tmp_path, monkeypatch):
    """Three channels take MoCo v2's colour augmentation (cfe.colour), one channel upstream's Omniglot views."""
    from cfe import colour
    from tests.conftest import synthetic_images
    X, _ = synthetic_images(4, 16, size=32, channels=3)
    np.savez(tmp_path / "rgb.npz", X=X)
    used = []
    monkeypatch.setattr(colour, "moco_v2_augment", lambda x, g, f=colour.moco_v2_augment: used.append(1) or f(x, g))
    train.main(["--data", str(tmp_path / "rgb.npz"), "--out", str(tmp_path / "run"), "--epochs", "1",
                "--batch-size", "32", "--queue-size", "32", "--hidden", "8", "--dim", "16", "--device", "cpu",
                "--threads", "1"])
    assert len(used) == 2 * 2 and last(tmp_path / "run")["arch"]["in_channels"] == 3  # two views, two steps


@pytest.mark.parametrize("speed", [["--precision", "bf16"], ["--compile"]])
def test_the_fast_path_trains_the_model_the_plain_path_trains(runs, images_only, tmp_path, monkeypatch, speed):
    """bf16 autocast and torch.compile (the GPU fast path) on CPU: the same run to their rounding. Compiling is
    traced by dynamo but not code-generated here (backend "eager"): inductor's C++ build takes minutes."""
    whole = runs[0]
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: compile_module(self, backend="eager"))
    one = ["--epochs", "1", "--save-every", "1"]
    plain, fast = tmp_path / "plain", tmp_path / "fast"
    train.main([*args(images_only, plain), *one])
    train.main([*args(images_only, fast), *one, *speed])
    a, b = last(plain), last(fast)
    tol = 0.05 if speed[0] == "--precision" else 1e-4  # bf16 keeps 8 bits of mantissa
    for key, value in a["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(b["model"][key], value, rtol=tol, atol=tol, msg=key)
    assert b["config"][speed[0].lstrip("-")] in ("bf16", True) and whole.exists()
    losses = [read_jsonl(run / "metrics.jsonl")[0]["loss"] for run in (plain, fast)]
    assert losses[1] == pytest.approx(losses[0], rel=tol)


def test_the_moco_loss_trains_with_the_same_code_and_is_recorded(images_only, tmp_path, monkeypatch):
    """--loss moco: the same training step calls moco_loss (once per step, on the 4 BatchNorm splits) where the
    default calls cfe_loss, and trains another model; the checkpoint's arch and config record the loss, and a moco
    run cannot resume as a CFE one."""
    import cfe.model

    real, splits = cfe.model.moco_loss, []
    monkeypatch.setattr("cfe.model.moco_loss", lambda *a, groups: splits.append(groups) or real(*a, groups=groups))
    moco, plain = tmp_path / "moco", tmp_path / "cfe"
    train.main(args(images_only, moco, "--epochs", 1, "--loss", "moco"))
    assert splits == [4] * 12  # 800 images, batch 64: 12 steps
    train.main(args(images_only, plain, "--epochs", 1))
    assert len(splits) == 12  # the default never calls it
    a, b = last(moco), last(plain)
    assert (a["arch"]["loss"], a["config"]["loss"]) == ("moco", "moco")
    assert (b["arch"]["loss"], b["config"]["loss"]) == ("cfe", "cfe")
    assert load_cfe(moco / "checkpoints" / "last.pt").loss == "moco"
    conv = "encoder_q.0.blocks.0.0.weight"
    assert not torch.equal(a["model"][conv], b["model"][conv])
    assert np.isfinite(read_jsonl(moco / "metrics.jsonl")[0]["loss"])
    before = files_under(moco)
    with pytest.raises(UserError, match="differ .*: loss"):
        train.main(args(images_only, moco, "--epochs", 1, "--resume"))
    assert files_under(moco) == before


def test_a_run_from_before_the_loss_option_resumes_as_the_cfe_run_it_was(runs, images_only, tmp_path):
    """A config.json without "loss" was written by a CFE-loss run: it resumes with the default (its config.json
    left without the key) and refuses --loss moco with a one-line error."""
    whole = runs[0]
    run = stopped_after(whole, 2, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    del config["loss"]
    (run / "config.json").write_text(json.dumps(config))
    before = files_under(run)
    with pytest.raises(UserError, match="differ from .*config.json: loss \\(a run from before the option, made "
                                        "with loss cfe\\)$"):
        train.main(args(images_only, run, "--resume", "--loss", "moco"))
    assert files_under(run) == before
    train.main(args(images_only, run, "--resume"))
    assert_same(last(whole)["model"], last(run)["model"])
    assert "loss" not in json.loads((run / "config.json").read_text())
