"""scripts/omniglot.sh and the other dataset scripts (one chain, scripts/lib/chain.sh): each preset hands the stages
the settings it documents, each dataset its reader and defaults, and bad variables stop it early.

The stages are replaced by a stub interpreter (PYTHON) that only records its arguments, so this runs in a second.
"""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(tmp_path, prepared=True, cwd=None, script="omniglot.sh", **env):
    """Run scripts/SCRIPT (omniglot.sh) with a recording stub for Python; returns (exit code, stderr, [(module, args)]),
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
    r = subprocess.run(["bash", str(ROOT / "scripts" / script)], env=full_env, capture_output=True, text=True,
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
    return [f"{m} {option(a, '--shots')}" if m.endswith(".test") else m for m, a in calls]


def args_of(calls, module):
    """The arguments of the one call to `module`."""
    found = [a for m, a in calls if m == module]
    assert len(found) == 1, (module, stages(calls))
    return found[0]


PIPELINE = ["cfe.train", "cfe.encode", "maml.train", "maml.test 1", "maml.test 5", "fewshot.baseline",
            "fewshot.report"]


@pytest.mark.parametrize("preset, cfe_epochs, maml_epochs, test_steps", [("quick", "50", "20", "10"),
                                                                         ("paper", "200", "20", "50")])
def test_presets_set_the_budgets_and_leave_every_other_setting_to_the_stages(tmp_path, preset, cfe_epochs,
                                                                             maml_epochs, test_steps):
    rc, err, calls = run_script(tmp_path, PRESET=preset)
    assert rc == 0, err
    assert stages(calls) == PIPELINE
    run = str(tmp_path / "run")
    assert args_of(calls, "cfe.train") == ["--data", f"{tmp_path}/data/omniglot_cache_train.npz", "--out", f"{run}/cfe",
                                           "--epochs", cfe_epochs, "--seed", "0", "--device", "auto", "--threads",
                                           "0", "--resume"]
    encode = args_of(calls, "cfe.encode")
    assert option(encode, "--checkpoint") == f"{run}/cfe/checkpoints/last.pt" and option(encode, "--clusters") == "500"
    train = args_of(calls, "maml.train")
    assert option(train, "--caches") == f"{run}/caches" and option(train, "--epochs") == maml_epochs
    assert "--no-pem" not in train and option(train, "--out") == f"{run}/maml-pem"
    for module, args in calls:
        if module == "maml.test":
            assert option(args, "--steps") == test_steps and option(args, "--split") == "test"
            assert "--seed" not in args  # the test tasks are seed 0's, whatever the training seed
    baseline = args_of(calls, "fewshot.baseline")
    assert option(baseline, "--cache") == f"{tmp_path}/data/omniglot_cache_test.npz"
    assert baseline[baseline.index("--shots") + 1:] == ["1", "5", "--tasks", "1000"]


def test_variables_reach_the_stages(tmp_path):
    rc, err, calls = run_script(tmp_path, SEED="3", CLUSTERS="250", PEM="0", SPLIT="val", CFE_EPOCHS="7",
                                MAML_ARGS="--first-order --meta-batch 4", ENCODE_ARGS="--partitions 2")
    assert rc == 0, err
    train = args_of(calls, "maml.train")
    assert "--no-pem" in train and option(train, "--out").endswith("/run/maml-nopem") and option(train, "--seed") == "3"
    assert "--first-order" in train and option(train, "--meta-batch") == "4"
    encode = args_of(calls, "cfe.encode")
    assert option(encode, "--clusters") == "250" and option(encode, "--partitions") == "2"
    assert option(args_of(calls, "cfe.train"), "--epochs") == "7"
    assert all(option(a, "--split") == "val" for m, a in calls if m in ("maml.test", "fewshot.baseline"))
    assert option(args_of(calls, "fewshot.baseline"), "--cache").endswith("/data/omniglot_cache_val.npz")


@pytest.mark.parametrize("shots, tests", [("5", ["maml.test 5", "fewshot.baseline", "fewshot.report"]), ("", []),
                                          ("5 1", ["maml.test 5", "maml.test 1", "fewshot.baseline",
                                                   "fewshot.report"])])
def test_test_shots_chooses_the_meta_tests(tmp_path, shots, tests):
    rc, err, calls = run_script(tmp_path, TEST_SHOTS=shots)
    assert rc == 0, err
    assert stages(calls) == ["cfe.train", "cfe.encode", "maml.train", *tests]


@pytest.mark.parametrize("env, message", [
    ({"PRESET": "fast"}, "PRESET must be one of: paper quick"),
    ({"PEM": "on"}, "PEM must be 0 or 1"),
    ({"SPLIT": "train"}, "SPLIT must be test or val"),
])
def test_bad_variables_give_one_line_and_run_nothing(tmp_path, env, message):
    rc, err, calls = run_script(tmp_path, **env)
    assert rc == 2 and calls == []
    assert err.strip().splitlines() == [err.strip()] and message in err


def test_a_failing_stage_stops_the_script(tmp_path):
    rc, err, calls = run_script(tmp_path, STUB_FAIL="cfe.encode")
    assert rc != 0 and stages(calls) == ["cfe.train", "cfe.encode"]


def test_finished_tests_are_skipped_until_the_model_changes(tmp_path):
    """The stages resume or skip by themselves (--resume); the script skips a meta-test whose result is newer than
    the model it tested."""
    from fewshot.report import result_name  # the script spells the test results' names out; this keeps them in step
    results = tmp_path / "run" / "maml-pem" / "results"
    files = {"best": tmp_path / "run" / "maml-pem" / "checkpoints" / "best.pt",
             "test1": results / result_name("test", 5, 1), "test5": results / result_name("test", 5, 5)}
    for t, path in enumerate(files.values()):  # made in this order, one second apart
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (1000 + t, 1000 + t))
    rc, err, calls = run_script(tmp_path)
    assert rc == 0, err
    assert stages(calls) == ["cfe.train", "cfe.encode", "maml.train", "fewshot.baseline", "fewshot.report"]
    os.utime(files["best"], (2000, 2000))  # MAML trained further and found a better epoch: both results are stale
    rc, err, calls = run_script(tmp_path)
    assert stages(calls) == PIPELINE
    os.utime(files["test1"], (2500, 2500))  # the 1-shot test finished after it, the 5-shot one was interrupted
    rc, err, calls = run_script(tmp_path)
    assert "maml.test 1" not in stages(calls) and "maml.test 5" in stages(calls)
    rc, err, calls = run_script(tmp_path, SPLIT="val")  # val results are other files
    assert "maml.test 1" in stages(calls) and "maml.test 5" in stages(calls)


def test_failed_data_preparation_leaves_no_run_folder(tmp_path):
    rc, err, calls = run_script(tmp_path, prepared=False, STUB_FAIL="fewshot.datasets")
    assert rc != 0 and stages(calls) == ["fewshot.datasets"]
    assert not (tmp_path / "run").exists()
    rc, err, calls = run_script(tmp_path, prepared=False)
    assert rc == 0, err
    assert stages(calls) == ["fewshot.datasets", *PIPELINE] and (tmp_path / "run").is_dir()


@pytest.mark.parametrize("source", ["omniglot.tar.xz", "sub/../omniglot.tar.xz"])
def test_a_relative_source_is_found_from_where_the_command_was_typed(tmp_path, source):
    """The script works in the repository, but OMNIGLOT_SOURCE=omniglot.tar.xz means the file here."""
    rc, err, calls = run_script(tmp_path, prepared=False, cwd=tmp_path, OMNIGLOT_SOURCE=source)
    assert rc == 0, err
    assert Path(option(args_of(calls, "fewshot.datasets"), "--source")).resolve() == tmp_path / "omniglot.tar.xz"


@pytest.mark.parametrize("script, dataset, source_var", [("miniimagenet.sh", "miniimagenet", "MINI_SOURCE"),
                                                         ("tieredimagenet.sh", "tieredimagenet", "TIERED_SOURCE"),
                                                         ("imagefolder.sh", "imagefolder", "IMAGES")])
def test_imagenet_style_scripts(tmp_path, script, dataset, source_var):
    rc, err, calls = run_script(tmp_path, prepared=False, cwd=tmp_path, script=script, **{source_var: "raw"})
    assert rc == 0, err
    assert stages(calls) == ["fewshot.datasets", "cfe.train", "cfe.encode", "maml.train", "maml.test 1",
                             "maml.test 5", "maml.test 20", "maml.test 50", "fewshot.baseline", "fewshot.report"]
    prepare = args_of(calls, "fewshot.datasets")
    assert prepare[0] == dataset and option(prepare, "--source") == str(tmp_path / "raw")
    cfe = args_of(calls, "cfe.train")
    assert option(cfe, "--data").endswith(f"/data/{dataset}_cache_train.npz")
    assert option(cfe, "--backbone") == "resnet18"
    assert option(args_of(calls, "cfe.encode"), "--dataset") == dataset
    assert option(args_of(calls, "maml.train"), "--hidden") == "32"
    assert option(args_of(calls, "fewshot.baseline"), "--shots") == "1"  # then 5 20 50
    # the environment overrides a dataset's defaults; EP gets ResNet-12
    rc, err, calls = run_script(tmp_path, script=script, CFE_ARGS="--backbone conv4", TEST_SHOTS="5",
                                METALEARNER="ep", PREPARE_ARGS="--exclude-classes none")
    assert rc == 0, err
    assert stages(calls) == ["cfe.train", "cfe.encode", "ep.train", "ep.test 5", "fewshot.baseline", "fewshot.report"]
    assert option(args_of(calls, "cfe.train"), "--backbone") == "conv4"
    assert option(args_of(calls, "ep.train"), "--backbone") == "resnet12"


def test_cifar10_script_and_prepare_args(tmp_path):
    rc, err, calls = run_script(tmp_path, prepared=False, script="cifar10.sh", CIFAR10_SOURCE="/x/cifar.tar.gz",
                                PREPARE_ARGS="--exclude-classes none")
    assert rc == 0, err
    assert stages(calls) == ["fewshot.datasets", *PIPELINE]
    prepare = args_of(calls, "fewshot.datasets")
    assert prepare[:3] == ["cifar10", "--source", "/x/cifar.tar.gz"] and option(prepare, "--exclude-classes") == "none"
    assert "--backbone" not in args_of(calls, "cfe.train")  # the stages' defaults


def test_nproc_launches_cfe_and_maml_training_with_torchrun(tmp_path):
    rc, err, calls = run_script(tmp_path, NPROC="2")
    assert rc == 0, err
    launched = [a for m, a in calls if m == "torch.distributed.run"]
    assert [a[a.index("-m") + 1] for a in launched] == ["cfe.train", "maml.train"]
    assert all(a[:2] == ["--standalone", "--nproc_per_node=2"] for a in launched)
    assert stages(calls) == ["torch.distributed.run", "cfe.encode", "torch.distributed.run", *PIPELINE[3:]]
    rc, err, calls = run_script(tmp_path, NPROC="0")
    assert rc == 2 and calls == [] and "NPROC must be a positive integer" in err


def slurm_job(tmp_path, name, **env):
    """Run scripts/slurm/NAME with stand-ins for srun and scontrol (two nodes), PYTHON and the dataset script, each
    recording its command line (and NPROC) in calls.txt."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir(exist_ok=True)
    for tool, body in {"srun": f'echo "srun $*" >> {log}', "scontrol": "printf 'node1\\nnode2\\n'",
                       "python": f'echo "python $*" >> {log}',
                       "script.sh": f'echo "script NPROC=$NPROC PRESET=$PRESET" >> {log}'}.items():
        (bin_dir / tool).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
                "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "42", "SLURM_NNODES": "2",
                "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_GPUS_ON_NODE": "4", "SCRIPT": str(bin_dir / "script.sh"),
                "DATA_DIR": str(tmp_path / "data"), "RUN_DIR": str(tmp_path / "run"), **env}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / name)], env=full_env, capture_output=True, text=True)
    return r.returncode, r.stderr, log.read_text().splitlines() if log.exists() else []


def test_slurm_examples(tmp_path):
    rc, err, lines = slurm_job(tmp_path, "one_node.sbatch")
    assert rc == 0, err
    assert lines == ["script NPROC=4 PRESET=paper"]
    (tmp_path / "calls.txt").unlink()
    rc, err, lines = slurm_job(tmp_path, "multinode_cfe.sbatch", MINI_SOURCE="/data/mini")
    assert rc == 0, err
    prepare, srun, script = lines
    assert prepare.startswith("python -m fewshot.datasets miniimagenet --source /data/mini --out")
    assert "-m torch.distributed.run --nnodes=2 --nproc_per_node=4" in srun and "--rdzv-endpoint=node1:29500" in srun
    assert "-m cfe.train" in srun and "--epochs 200" in srun and "--backbone resnet18" in srun
    assert script == "script NPROC=4 PRESET=paper"


def test_ep_trains_and_tests_on_the_same_caches(tmp_path):
    rc, err, calls = run_script(tmp_path, METALEARNER="ep", EP_ARGS="--backbone conv4")
    assert rc == 0, err
    assert [m for m, _ in calls] == ["cfe.train", "cfe.encode", "ep.train", "ep.test", "ep.test", "fewshot.baseline",
                                     "fewshot.report"]
    train = args_of(calls, "ep.train")
    run = str(tmp_path / "run")
    assert option(train, "--caches") == f"{run}/caches" and option(train, "--out") == f"{run}/ep"
    assert option(train, "--pretrain-epochs") == "10" and option(train, "--finetune-epochs") == "5"
    assert option(train, "--backbone") == "conv4"
    assert all("--steps" not in a and option(a, "--run") == f"{run}/ep" for m, a in calls if m == "ep.test")
    rc, err, calls = run_script(tmp_path, METALEARNER="protonet")
    assert rc == 2 and calls == [] and "METALEARNER must be maml or ep" in err
