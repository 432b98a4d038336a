"""scripts/omniglot.sh: each preset hands the stages the settings it documents, and bad variables stop it early.

The stages are replaced by a stub interpreter (PYTHON) that only records its arguments, so this runs in a second.
"""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(tmp_path, **env):
    """Run scripts/omniglot.sh with a recording stub for Python; returns (exit code, stderr, {module: args})."""
    log = tmp_path / "calls.txt"
    log.unlink(missing_ok=True)
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    stub.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "prepare.json").touch()  # the data stage sees prepared data and is skipped
    full_env = {**os.environ, "PYTHON": str(stub), "DATA_DIR": str(data), "RUN_DIR": str(tmp_path / "run"), **env}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "omniglot.sh")], env=full_env, capture_output=True, text=True)
    calls = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        module, *args = line.split()[1:]  # "-m module args..."
        calls[module] = args
    return r.returncode, r.stderr, calls


def option(args, name):
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.parametrize("env, epochs, bn_splits, crop, split_loss, test_steps", [
    ({"PRESET": "quick"}, "90", "1", "clamped", False, "10"),
    ({"PRESET": "paper"}, "200", "4", "torchvision", True, "50"),
    ({"PRESET": "paper", "CFE_BN_SPLITS": "1"}, "200", "1", "torchvision", False, "50"),  # no splits, no per-split loss
    ({"PRESET": "paper", "CFE_PER_SPLIT_LOSS": "0", "CFE_CROP": "clamped"}, "200", "4", "clamped", False, "50"),
    ({"PRESET": "quick", "CFE_BN_SPLITS": "4", "CFE_PER_SPLIT_LOSS": "1"}, "90", "4", "clamped", True, "10"),
])
def test_presets_pass_their_settings_to_the_stages(tmp_path, env, epochs, bn_splits, crop, split_loss, test_steps):
    rc, err, calls = run_script(tmp_path, **env)
    assert rc == 0, err
    assert list(calls) == ["cfe.train", "cfe.encode", "maml.train", "maml.test", "fewshot.report"]
    cfe = calls["cfe.train"]
    assert (option(cfe, "--epochs"), option(cfe, "--bn-splits"), option(cfe, "--crop")) == (epochs, bn_splits, crop)
    assert ("--per-split-loss" in cfe) == split_loss
    assert option(calls["maml.test"], "--steps") == test_steps
    assert option(calls["maml.train"], "--save-every") == "10"


@pytest.mark.parametrize("env, message", [
    ({"PRESET": "fast"}, "PRESET must be quick or paper"),
    ({"CFE_PER_SPLIT_LOSS": "yes"}, "CFE_PER_SPLIT_LOSS must be 0 or 1"),
    ({"CFE_CROP": "pil"}, "CFE_CROP must be clamped or torchvision"),
    ({"PEM": "on"}, "PEM must be 0 or 1"),
])
def test_bad_variables_give_one_line_and_run_nothing(tmp_path, env, message):
    rc, err, calls = run_script(tmp_path, **env)
    assert rc == 2 and calls == {}
    assert err.strip().splitlines() == [err.strip()] and message in err


def test_script_accepts_every_crop_mode_the_trainer_offers(tmp_path):
    from cfe.augment import CROP_MODES  # the script spells the list out; this keeps the two in step
    for mode in CROP_MODES:
        (tmp_path / mode).mkdir()
        rc, err, calls = run_script(tmp_path / mode, CFE_CROP=mode)
        assert rc == 0, err
        assert option(calls["cfe.train"], "--crop") == mode


def test_finished_stages_are_skipped_until_what_they_were_made_from_changes(tmp_path):
    from fewshot.report import result_name  # the script spells the test results' names out; this keeps them in step
    run = tmp_path / "run"
    files = {"ckpt": run / "cfe" / "checkpoints" / "epoch_0090.pt", "encoded": run / "caches" / "encode.json",
             "cache": run / "caches" / "omniglot_64_K_500_train.npz",
             "best": run / "maml-pem" / "checkpoints" / "best.pt",
             "test1": run / "maml-pem" / "results" / result_name(5, 1),
             "test5": run / "maml-pem" / "results" / result_name(5, 5)}
    for t, path in enumerate(files.values()):  # made in this order, one second apart
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (1000 + t, 1000 + t))
    rc, err, calls = run_script(tmp_path)
    assert rc == 0, err
    assert list(calls) == ["maml.train", "fewshot.report"]  # MAML always runs: --resume stops at once when done
    os.utime(files["best"], (2000, 2000))  # MAML trained further and found a better epoch
    rc, err, calls = run_script(tmp_path)
    assert list(calls) == ["maml.train", "maml.test", "fewshot.report"]
    os.utime(files["ckpt"], (3000, 3000))  # a new CFE checkpoint: its caches are encoded again
    rc, err, calls = run_script(tmp_path)
    assert list(calls) == ["cfe.encode", "maml.train", "maml.test", "fewshot.report"]
