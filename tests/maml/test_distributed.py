"""maml.train under torchrun (2 gloo processes on the CPU): it trains the model one process trains, with PEM
rebuilding meta-batches and the val tasks split over the ranks; only rank 0 writes; a stopped 2-process run resumes,
with 2 processes or 1, to the uninterrupted result; a bad launch is refused by every rank alike, nothing written."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from fewshot.data import load_split
from fewshot.distributed import World
from fewshot.errors import cli_main
from fewshot.io import read_jsonl
from maml import train as maml_train
from maml.maml import MAMLNet
from maml.scaleout import share
from tests.conftest import REPO, assert_same, file_bytes, files_under
from tests.maml.test_train import SIDE, load, toy_caches

ARGS = ["--epochs", "3", "--batches-per-epoch", "2", "--meta-batch", "4", "--hidden", "8", "--pem-warmup", "1",
        "--pem-eta", "0.5", "--val-tasks", "5", "--val-steps", "1", "--save-every", "1", "--threads", "1",
        "--device", "cpu"]  # 5 val tasks: 3 on rank 0, 2 on rank 1


def torchrun(*argv) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "maml.train", *map(str, argv)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def train_two(caches, out, *extra) -> subprocess.CompletedProcess:
    r = torchrun("--caches", caches["dir"], "--out", out, *ARGS, *extra)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def train_one(caches, out, *extra) -> None:
    maml_train.main(["--caches", str(caches["dir"]), "--out", str(out), *ARGS, *map(str, extra)])


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return toy_caches(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def one(caches, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    train_one(caches, out)
    return out


@pytest.fixture(scope="module")
def two(caches, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    return out, train_two(caches, out)


# NOTE: the conv biases are left out of the weight comparison. The batch norm after each conv subtracts any
# per-channel constant, so their gradient is zero but for rounding, and Adam, which divides by the gradient's running
# RMS, turns that noise into steps of up to --meta-lr: they differ between any two summation orders (one process's
# included) and change no output, which the comparison of the outputs shows.
CANCELLED = {f"features.blocks.{i}.0.bias" for i in range(4)}


def assert_same_model(a: dict, b: dict, images: torch.Tensor) -> None:
    """Two state dicts hold the same model to float tolerance: the weights and the outputs on `images`."""
    assert a.keys() == b.keys()
    for name in a.keys() - CANCELLED:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)
    outputs = []
    for state in (a, b):
        model = MAMLNet(1, 8, SIDE, 5)
        model.load_state_dict(state)
        with torch.no_grad():
            outputs.append(model(images))
    torch.testing.assert_close(*outputs, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def val_images(caches):
    return torch.from_numpy(load_split(caches["val"]).X).permute(0, 3, 1, 2).float() / 255


def rows(out) -> list:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(out / "metrics.jsonl")]


def test_two_processes_train_the_model_one_process_trains(one, two, val_images):
    two = two[0]
    a, b = load(one), load(two)
    assert a["epoch"] == b["epoch"] == 3
    for key in ("model", "eval_model"):
        assert_same_model(a[key], b[key], val_images)
    rows_a, rows_b = rows(one), rows(two)
    # PEM rebuilt meta-batches after its warm-up, the same ones (each rank found the pools of its share)
    assert [r["pem_rebuilt_batches"] for r in rows_b] == [r["pem_rebuilt_batches"] for r in rows_a] == [0, 2, 1]
    for ra, rb in zip(rows_a, rows_b):
        assert (rb["val_acc"], rb["val_ci95"]) == (ra["val_acc"], ra["val_ci95"])  # gathered in task order
        assert (rb["loss"], rb["train_acc"]) == pytest.approx((ra["loss"], ra["train_acc"]), rel=1e-6)
    assert (load(two, "best")["epoch"], load(two, "best")["best_acc"]) == (load(one, "best")["epoch"], a["best_acc"])
    assert_same_model(load(one, "best")["model"], load(two, "best")["model"], val_images)


def test_only_rank_zero_writes_and_prints(one, two):
    (two, r) = two
    assert files_under(two).keys() == files_under(one).keys()
    assert len(read_jsonl(two / "metrics.jsonl")) == 3 and len(read_jsonl(two / "invocations.jsonl")) == 1
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    assert json.loads((one / "config.json").read_text())["world_size"] == 1
    assert len(re.findall(r"^maml epoch \d/3 loss", r.stdout, re.M)) == 3  # one line per epoch, not per rank
    assert r.stderr.count("maml epoch 1/3:") == 1  # one progress bar


def test_a_stopped_run_resumes_with_two_processes_or_one_to_the_uninterrupted_result(caches, two, tmp_path,
                                                                                      val_images):
    """Stopped after epoch 1 and resumed with --resume: both ranks load last.pt and end where the uninterrupted
    2-process run ends, bit for bit; resumed by one process instead, the run ends there to float tolerance."""
    two, out, kept = two[0], tmp_path / "run", tmp_path / "kept"
    train_two(caches, out, "--epochs", 1)
    shutil.copytree(out, kept)
    train_two(caches, out, "--resume")  # both ranks load last.pt
    a, b = load(two), load(out)
    for key in ("model", "eval_model", "optimizer", "best_acc", "epoch", "arch", "selection"):
        assert_same(a[key], b[key], key)  # the same 2 processes' arithmetic: bit for bit
    assert rows(out) == rows(two)
    # the process count may change on --resume: one process goes on with the same computation
    shutil.rmtree(out)
    kept.rename(out)  # (config.json names its run folder, which --resume checks)
    train_one(caches, out, "--resume")
    c = load(out)
    for key in ("model", "eval_model"):
        assert_same_model(a[key], c[key], val_images)
    assert [r["val_acc"] for r in rows(out)] == [r["val_acc"] for r in rows(two)]
    assert [i["world_size"] for i in read_jsonl(out / "invocations.jsonl")] == [2, 1]


@pytest.mark.parametrize("rank", [0, 1])
def test_a_meta_batch_the_processes_cannot_share_is_refused_before_they_join(caches, capsys, monkeypatch,
                                                                             tmp_path, rank):
    """Each rank refuses it before it joins the others (so none waits for one that gave up), in one line, status 2,
    and nothing is written. In-process, with the variables torchrun sets for that rank."""
    for name, value in (("WORLD_SIZE", 2), ("RANK", rank), ("LOCAL_RANK", rank)):
        monkeypatch.setenv(name, str(value))

    def joined(*args):  # the rank would wait here for the other, which this test does not start
        raise AssertionError("joined the other processes before refusing")

    monkeypatch.setattr(maml_train, "init", joined)
    argv = ["--caches", str(caches["dir"]), "--out", str(tmp_path / "run"), *ARGS, "--meta-batch", "3"]
    with pytest.raises(SystemExit) as exit_:
        cli_main(maml_train.main, argv, resumable=True, distributed=True)
    assert exit_.value.code == 2 and capsys.readouterr().err == (
        "error: --meta-batch 3 does not split over 2 processes (each meta-learns an equal share of its tasks); pass "
        "a multiple of 2\n")
    assert not (tmp_path / "run").exists()


def by_hand(*argv) -> list:
    """[(status, stderr)] of the 2 processes torchrun would start, started by hand with its variables: torchrun
    stops the others once one has failed, so a rank's own end would be a race; here each runs to it (or hangs)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [subprocess.Popen([sys.executable, "-m", "maml.train", *map(str, argv)], cwd=REPO, text=True,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for rank in range(2)]
    try:
        return [(p.wait(timeout=120), p.stderr.read()) for p in procs]  # a rank left waiting fails here
    finally:
        for p in procs:
            p.kill()
            p.wait()
            p.stderr.close()


def test_a_run_folder_rank_zero_refuses_is_refused_by_every_rank(caches, two, tmp_path):
    """prepare_run_dir runs on rank 0 alone; its refusal reaches the other rank, which would otherwise wait for rank 0
    (until torchrun stopped it, saying nothing): every rank says it in one line and exits with status 2."""
    out = tmp_path / "run"
    shutil.copytree(two[0], out)
    before = file_bytes(out)
    message = f"error: {out} already holds a run; pass --resume to continue it or choose another --out"
    for status, err in by_hand("--caches", caches["dir"], "--out", out, *ARGS):  # a run is there, and no --resume
        assert (status, err) == (2, message + "\n")
    assert file_bytes(out) == before


def test_the_shares_of_the_ranks_are_contiguous_and_cover_every_task_once():
    for size in (1, 2, 3, 4):
        for n in (0, 1, 4, 5, 7):  # meta-batches split evenly; val tasks may not (the last ranks get fewer)
            shares = [range(n)[share(World(rank, size, rank), n)] for rank in range(size)]
            assert [i for s in shares for i in s] == list(range(n))
