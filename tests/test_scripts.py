"""scripts/omniglot.sh: each preset hands the stages the settings it documents, and bad variables stop it early.

The stages are replaced by a stub interpreter (PYTHON) that only records its arguments, so this runs in a second.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(tmp_path, prepared=True, cwd=None, **env):
    """Run scripts/omniglot.sh with a recording stub for Python; returns (exit code, stderr, [(module, args)]),
    one entry per call in the order made (maml.test runs once per number of shots).

    The stub fails (exit 1) for the module named in STUB_FAIL. Unless `prepared`, the data stage runs."""
    log = tmp_path / "calls.txt"
    log.unlink(missing_ok=True)
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n[ "$2" != "${{STUB_FAIL:-}}" ]\n')
    stub.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    if prepared:
        (data / "prepare.json").touch()  # the data stage sees prepared data and is skipped
    full_env = {**os.environ, "PYTHON": str(stub), "DATA_DIR": str(data), "RUN_DIR": str(tmp_path / "run"), **env}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "omniglot.sh")], env=full_env, capture_output=True, text=True,
                       cwd=cwd)
    calls = []
    for line in log.read_text().splitlines() if log.exists() else []:
        module, *args = line.split()[1:]  # "-m module args..."
        calls.append((module, args))
    return r.returncode, r.stderr, calls


def option(args, name):
    return args[args.index(name) + 1] if name in args else None


def stages(calls):
    """The modules called, in order, a meta-test named with its shots: ["cfe.train", ..., "maml.test 5", ...]."""
    return [f"{m} {option(a, '--shots')}" if m == "maml.test" else m for m, a in calls]


def args_of(calls, module):
    """The arguments of the one call to `module`."""
    found = [a for m, a in calls if m == module]
    assert len(found) == 1, (module, stages(calls))
    return found[0]


@pytest.mark.parametrize("env, epochs, bn_splits, crop, split_loss, kmeans, maml_epochs, test_steps", [
    ({"PRESET": "quick"}, "75", "1", "clamped", False, ("0", "1"), "30", "10"),
    ({"PRESET": "paper"}, "200", "4", "torchvision", True, ("0", "1"), "20", "50"),
    ({"PRESET": "paper-plus"}, "200", "4", "torchvision", True, ("5", "10"), "40", "50"),
    # no splits, no per-split loss
    ({"PRESET": "paper", "CFE_BN_SPLITS": "1"}, "200", "1", "torchvision", False, ("0", "1"), "20", "50"),
    ({"PRESET": "paper", "CFE_PER_SPLIT_LOSS": "0", "CFE_CROP": "clamped"}, "200", "4", "clamped", False, ("0", "1"),
     "20", "50"),
    ({"PRESET": "quick", "CFE_BN_SPLITS": "4", "CFE_PER_SPLIT_LOSS": "1"}, "75", "4", "clamped", True, ("0", "1"), "30",
     "10"),
    ({"PRESET": "paper-plus", "KNN_SMOOTH": "0", "PARTITIONS": "3", "MAML_EPOCHS": "30"}, "200", "4", "torchvision",
     True, ("0", "3"), "30", "50"),
])
def test_presets_pass_their_settings_to_the_stages(tmp_path, env, epochs, bn_splits, crop, split_loss, kmeans,
                                                   maml_epochs, test_steps):
    rc, err, calls = run_script(tmp_path, **env)
    assert rc == 0, err
    assert stages(calls) == ["cfe.train", "cfe.encode", "maml.train", "maml.test 1", "maml.test 5", "fewshot.report"]
    cfe = args_of(calls, "cfe.train")
    assert (option(cfe, "--epochs"), option(cfe, "--bn-splits"), option(cfe, "--crop")) == (epochs, bn_splits, crop)
    assert ("--per-split-loss" in cfe) == split_loss
    encode = args_of(calls, "cfe.encode")
    assert (option(encode, "--knn-smooth"), option(encode, "--partitions")) == kmeans
    assert option(args_of(calls, "maml.train"), "--epochs") == maml_epochs
    assert [option(a, "--steps") for m, a in calls if m == "maml.test"] == [test_steps, test_steps]
    assert option(args_of(calls, "maml.train"), "--save-every") == "10"


def test_paper_plus_is_the_paper_preset_with_the_recorded_options(tmp_path):
    """RESULTS.md records paper-plus seeds 0-2 as PRESET=paper with KNN_SMOOTH=5 PARTITIONS=10 and a MAML budget
    (made before the preset existed); the preset must hand every stage exactly those arguments."""
    runs = {}
    for name, env in (("plus", {"PRESET": "paper-plus"}),
                      ("paper", {"PRESET": "paper", "KNN_SMOOTH": "5", "PARTITIONS": "10", "MAML_EPOCHS": "40"})):
        (tmp_path / name).mkdir()
        rc, err, calls = run_script(tmp_path / name, **env, RUN_DIR=str(tmp_path / "run"))
        assert rc == 0, err
        runs[name] = [(m, [a.replace(str(tmp_path / name), "") for a in args]) for m, args in calls]  # data dir
    assert runs["plus"] == runs["paper"]


@pytest.mark.parametrize("shots, tests", [("5", ["maml.test 5"]), ("", []), ("5 1", ["maml.test 5", "maml.test 1"])])
def test_test_shots_chooses_the_meta_tests(tmp_path, shots, tests):
    rc, err, calls = run_script(tmp_path, TEST_SHOTS=shots)
    assert rc == 0, err
    assert stages(calls) == ["cfe.train", "cfe.encode", "maml.train", *tests, "fewshot.report"]

@pytest.mark.parametrize("env, message", [
    ({"PRESET": "fast"}, "PRESET must be quick, paper or paper-plus"),
    ({"CFE_PER_SPLIT_LOSS": "yes"}, "CFE_PER_SPLIT_LOSS must be 0 or 1"),
    ({"CFE_CROP": "pil"}, "CFE_CROP must be clamped or torchvision"),
    ({"PEM": "on"}, "PEM must be 0 or 1"),
    ({"META_LR_SCHEDULE": "step"}, "META_LR_SCHEDULE must be constant or cosine"),
    ({"KNN_SMOOTH": "-5"}, "KNN_SMOOTH must be a whole number"),
    ({"PARTITIONS": "0"}, "PARTITIONS must be a whole number >= 1"),
    ({"PARTITIONS": "2.5"}, "PARTITIONS must be a whole number >= 1"),
])
def test_bad_variables_give_one_line_and_run_nothing(tmp_path, env, message):
    rc, err, calls = run_script(tmp_path, **env)
    assert rc == 2 and calls == []
    assert err.strip().splitlines() == [err.strip()] and message in err


def test_script_passes_the_meta_lr_schedule_and_keeps_upstreams_constant_rate_by_default(tmp_path):
    for name, env in (("default", {}), ("cosine", {"META_LR_SCHEDULE": "cosine"})):
        (tmp_path / name).mkdir()
        rc, err, calls = run_script(tmp_path / name, **env)
        assert rc == 0, err
        assert option(args_of(calls, "maml.train"), "--meta-lr-schedule") == env.get("META_LR_SCHEDULE", "constant")


def test_script_accepts_every_crop_mode_the_trainer_offers(tmp_path):
    from cfe.augment import CROP_MODES  # the script spells the list out; this keeps the two in step
    for mode in CROP_MODES:
        (tmp_path / mode).mkdir()
        rc, err, calls = run_script(tmp_path / mode, CFE_CROP=mode)
        assert rc == 0, err
        assert option(args_of(calls, "cfe.train"), "--crop") == mode


def test_finished_stages_are_skipped_until_what_they_were_made_from_changes(tmp_path):
    from fewshot.report import result_name  # the script spells the test results' names out; this keeps them in step
    run = tmp_path / "run"
    env = {"CFE_EPOCHS": "90"}  # set here, so that the preset's CFE budget may change without touching this test
    files = {"ckpt": run / "cfe" / "checkpoints" / "epoch_0090.pt", "encoded": run / "caches" / "encode.json",
             "cache": run / "caches" / "omniglot_64_K_500_train.npz",
             "best": run / "maml-pem" / "checkpoints" / "best.pt",
             "test1": run / "maml-pem" / "results" / result_name(5, 1),
             "test5": run / "maml-pem" / "results" / result_name(5, 5)}
    for t, path in enumerate(files.values()):  # made in this order, one second apart
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (1000 + t, 1000 + t))
    rc, err, calls = run_script(tmp_path, **env)
    assert rc == 0, err
    assert stages(calls) == ["maml.train", "fewshot.report"]  # MAML always runs: --resume stops at once when done
    os.utime(files["best"], (2000, 2000))  # MAML trained further and found a better epoch: both results are stale
    rc, err, calls = run_script(tmp_path, **env)
    assert rc == 0, err
    assert stages(calls) == ["maml.train", "maml.test 1", "maml.test 5", "fewshot.report"]
    os.utime(files["test1"], (2500, 2500))  # the 1-shot test finished after it, the 5-shot one was interrupted
    rc, err, calls = run_script(tmp_path, **env)
    assert rc == 0, err
    assert stages(calls) == ["maml.train", "maml.test 5", "fewshot.report"]
    os.utime(files["ckpt"], (3000, 3000))  # a new CFE checkpoint: its caches are encoded again
    rc, err, calls = run_script(tmp_path, **env)
    assert rc == 0, err
    assert stages(calls) == ["cfe.encode", "maml.train", "maml.test 5", "fewshot.report"]


def test_caches_are_encoded_again_when_knn_smooth_or_partitions_change(tmp_path):
    caches = tmp_path / "run" / "caches"
    ckpt = tmp_path / "run" / "cfe" / "checkpoints" / "epoch_0090.pt"
    for t, path in enumerate((ckpt, caches / "omniglot_64_K_500_train.npz", caches / "encode.json")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (1000 + t, 1000 + t))
    (caches / "config.json").write_text('{\n  "k": 500\n}')  # caches from before the option: made without it
    for knn, encoded in (("", False), ("0", False), ("5", True)):  # empty: the default
        rc, err, calls = run_script(tmp_path, CFE_EPOCHS="90", KNN_SMOOTH=knn)
        assert rc == 0, err
        assert ("cfe.encode" in stages(calls)) == encoded, knn
    assert option(args_of(calls, "cfe.encode"), "--knn-smooth") == "5"
    (caches / "config.json").write_text('{\n  "k": 500,\n  "knn_smooth": 5\n}')
    for knn, encoded in (("5", False), ("0", True), ("50", True)):
        rc, err, calls = run_script(tmp_path, CFE_EPOCHS="90", KNN_SMOOTH=knn)
        assert rc == 0, err
        assert ("cfe.encode" in stages(calls)) == encoded, knn
    for parts, encoded in (("", False), ("1", False), ("10", True)):  # before the option: one partition
        rc, err, calls = run_script(tmp_path, CFE_EPOCHS="90", KNN_SMOOTH="5", PARTITIONS=parts)
        assert rc == 0, err
        assert ("cfe.encode" in stages(calls)) == encoded, parts
    assert option(args_of(calls, "cfe.encode"), "--partitions") == "10"
    (caches / "config.json").write_text('{\n  "k": 500,\n  "knn_smooth": 5,\n  "partitions": 10\n}')
    for parts, encoded in (("10", False), ("1", True)):
        rc, err, calls = run_script(tmp_path, CFE_EPOCHS="90", KNN_SMOOTH="5", PARTITIONS=parts)
        assert rc == 0, err
        assert ("cfe.encode" in stages(calls)) == encoded, parts


def test_failed_data_preparation_leaves_no_run_folder(tmp_path):
    rc, err, calls = run_script(tmp_path, prepared=False, STUB_FAIL="fewshot.datasets")
    assert rc != 0 and stages(calls) == ["fewshot.datasets"]
    assert not (tmp_path / "run").exists()
    rc, err, calls = run_script(tmp_path, prepared=False)
    assert rc == 0, err
    assert stages(calls)[:2] == ["fewshot.datasets", "cfe.train"] and (tmp_path / "run").is_dir()


@pytest.mark.parametrize("source", ["omniglot.tar.xz", "sub/../omniglot.tar.xz"])
def test_a_relative_source_is_found_from_where_the_command_was_typed(tmp_path, source):
    """The script works in the repository, but OMNIGLOT_SOURCE=omniglot.tar.xz means the file here."""
    rc, err, calls = run_script(tmp_path, prepared=False, cwd=tmp_path, OMNIGLOT_SOURCE=source)
    assert rc == 0, err
    assert Path(option(args_of(calls, "fewshot.datasets"), "--source")).resolve() == tmp_path / "omniglot.tar.xz"


# creat_env.sh and scripts/env.sh, copied into a temporary folder and run with stand-ins for python3 (which makes
# .venv/bin/python) and the venv's python (which records its arguments and fails when they contain $FAIL_ON), so
# no package is installed.
FAKE_VENV_PYTHON = """#!/usr/bin/env bash
args="$*"
echo "${args//$'\\n'/ }" >> "$CALLS"  # one line per call
case "$*" in *"$FAIL_ON"*) [ -z "$FAIL_ON" ] ;; esac
"""


def env_copy(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "creat_env.sh", tmp_path)
    shutil.copy(ROOT / "scripts" / "env.sh", tmp_path / "scripts")
    (tmp_path / "bin").mkdir()
    (tmp_path / "venv-python").write_text(FAKE_VENV_PYTHON)
    (tmp_path / "bin" / "python3").write_text(f"""#!/usr/bin/env bash
echo "python3 $*" >> "$CALLS"
mkdir -p .venv/bin && cp {tmp_path / "venv-python"} .venv/bin/python && chmod +x .venv/bin/python
""")
    (tmp_path / "bin" / "python3").chmod(0o755)
    return tmp_path


def half_made_venv(root):
    """What `python -m venv` leaves when pip is then interrupted: .venv/bin/python, no marker."""
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(root / "venv-python", root / ".venv" / "bin" / "python")
    (root / ".venv" / "bin" / "python").chmod(0o755)


def run_env(root, command, fail_on=""):
    """Run `command` in root with the stand-ins; returns (exit code, output, [calls to the stand-ins])."""
    calls = root / "calls.txt"
    calls.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "ENV")}
    env.update(PATH=f"{root / 'bin'}:{env['PATH']}", CALLS=str(calls), FAIL_ON=fail_on)
    r = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr, calls.read_text().splitlines() if calls.exists() else []


SOURCE_ENV = 'set -euo pipefail; source scripts/env.sh; echo "PYTHON=$PYTHON"'


def pip_installs(calls):
    return [c for c in calls if c.startswith("-m pip install")]


def test_env_sh_creates_a_missing_venv(tmp_path):
    root = env_copy(tmp_path)
    rc, out, calls = run_env(root, SOURCE_ENV)
    assert rc == 0, out
    assert calls[0] == "python3 -m venv .venv" and len(pip_installs(calls)) == 3
    assert "PYTHON=.venv/bin/python" in out and (root / ".venv" / ".installed").is_file()


def test_env_sh_completes_an_interrupted_install(tmp_path):
    root = env_copy(tmp_path)
    half_made_venv(root)
    rc, out, calls = run_env(root, SOURCE_ENV, fail_on="import")  # packages missing: the import check fails
    assert rc == 0, out
    assert "incomplete" in out and len(pip_installs(calls)) == 3 and "python3 -m venv .venv" not in calls
    assert (root / ".venv" / ".installed").is_file()
    rc, out, calls = run_env(root, SOURCE_ENV, fail_on="import")
    assert rc == 0 and calls == [] and "PYTHON=.venv/bin/python" in out  # the marker: nothing is checked again


def test_env_sh_accepts_a_complete_venv_made_before_the_marker(tmp_path):
    root = env_copy(tmp_path)
    half_made_venv(root)  # its python imports everything: a finished install from before the marker
    rc, out, calls = run_env(root, SOURCE_ENV)
    assert rc == 0, out
    assert len(calls) == 1 and calls[0].startswith("-c import torch") and pip_installs(calls) == []
    assert (root / ".venv" / ".installed").is_file()


def test_env_sh_stops_when_the_install_fails(tmp_path):
    root = env_copy(tmp_path)
    rc, out, calls = run_env(root, SOURCE_ENV, fail_on="install -r")
    assert rc != 0 and "PYTHON=" not in out
    assert not (root / ".venv" / ".installed").exists()


def test_creat_env_removes_the_marker_first_and_writes_it_last(tmp_path):
    root = env_copy(tmp_path)
    half_made_venv(root)
    (root / ".venv" / ".installed").touch()  # an earlier install; this one fails at its last step
    rc, out, calls = run_env(root, "bash creat_env.sh", fail_on="-e .")
    assert rc != 0 and len(pip_installs(calls)) == 3
    assert not (root / ".venv" / ".installed").exists()
    rc, out, calls = run_env(root, "bash creat_env.sh")  # run again on the same .venv: it completes
    assert rc == 0, out
    assert "python3 -m venv .venv" not in calls and (root / ".venv" / ".installed").is_file()


def test_creat_env_makes_a_venv_cut_short_before_pip_again(tmp_path):
    root = env_copy(tmp_path)
    half_made_venv(root)
    rc, out, calls = run_env(root, "bash creat_env.sh", fail_on="pip --version")  # no pip in the .venv yet
    assert rc == 0, out
    assert "python3 -m venv .venv" in calls and (root / ".venv" / ".installed").is_file()
