"""Shared fixtures: a tiny synthetic prepared dataset, a tiny CFE checkpoint, its encoded caches, a helper that
runs a stage's `main(argv)` in-process the way its command line does (through `cli_main`), and one that starts a
stage as a process of its own and SIGKILLs it once it has written a given file (`run_and_kill`).

Everything here is small enough for a 2-core machine; torch uses one thread in every test."""

import importlib
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fewshot.io as fio
from fewshot.checkpoint import save_checkpoint
from fewshot.data import SPLITS, encoded_path, prepared_path, write_split
from fewshot.errors import cli_main

REPO = Path(__file__).resolve().parents[1]  # the repository root, where `python -m <stage>` runs
DATASET = "synth"
CLASSES = {"train": 40, "val": 10, "test": 10}  # disjoint label ranges: train 0-39, val 40-49, test 50-59
PER_CLASS = 20


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_images(n_classes, per_class, first_label=0, size=28, channels=1, seed=0):
    """(X uint8 N x size x size x channels, Y int64): each class is a few bright bars, each image a shifted noisy
    copy of its class's pattern, so classes are distinguishable but not trivially identical."""
    rng = np.random.default_rng(seed)
    X = np.empty((n_classes * per_class, size, size, channels), dtype=np.uint8)
    for c in range(n_classes):
        pattern = np.zeros((size, size), dtype=np.float64)
        for _ in range(3):
            r, s = rng.integers(2, size - 8, 2)
            h, w = rng.integers(2, 8, 2)
            pattern[r:r + h, s:s + w] = 220
        for i in range(per_class):
            img = np.roll(pattern, tuple(rng.integers(-2, 3, 2)), axis=(0, 1)) + rng.normal(0, 20, (size, size))
            X[c * per_class + i] = np.clip(img, 0, 255).astype(np.uint8)[..., None]
    Y = np.repeat(np.arange(first_label, first_label + n_classes), per_class).astype(np.int64)
    return X, Y


def make_prepared(root, name=DATASET, classes=None, per_class=PER_CLASS, size=28, channels=1, seed=0):
    """Write {name}_cache_{split}.npz into root with fewshot.data.write_split; returns {split: (path, X, Y)}."""
    classes = classes or CLASSES
    out, first = {}, 0
    for i, split in enumerate(s for s in SPLITS if s in classes):
        X, Y = synthetic_images(classes[split], per_class, first, size, channels, seed + i)
        path = prepared_path(root, name, split)
        write_split(path, X, Y)
        out[split] = (path, X, Y)
        first += classes[split]
    return out


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """The shared synthetic dataset (read-only: copy it before changing anything). Attributes: root, name,
    path[split], X[split], Y[split]."""
    root = tmp_path_factory.mktemp("prepared")
    splits = make_prepared(root)
    return SimpleNamespace(root=root, name=DATASET, path={s: v[0] for s, v in splits.items()},
                           X={s: v[1] for s, v in splits.items()}, Y={s: v[2] for s, v in splits.items()})


@pytest.fixture(scope="session")
def images_only(prepared, tmp_path_factory):
    """The synthetic train images in a file without labels, as cfe.train reads them: training must not need them."""
    path = tmp_path_factory.mktemp("cfe_train_data") / "unlabelled.npz"
    fio.save_npz(path, X=prepared.X["train"])
    return path


TINY_CFE = dict(in_channels=1, hidden=8, image_size=28, dim=16, mlp=True, queue_size=256, momentum=0.99,
                temperature=0.2)


@pytest.fixture(scope="session")
def cfe_checkpoint(tmp_path_factory):
    """An untrained but valid tiny cfe checkpoint (what cfe.train writes, minus the optimizer)."""
    from cfe.model import CFE

    torch.manual_seed(0)
    model = CFE(**TINY_CFE)
    path = tmp_path_factory.mktemp("cfe_ckpt") / "last.pt"
    save_checkpoint(path, "cfe", arch=model.arch, model=model.state_dict(), epoch=1, config={})
    return path


ENCODE_K, ENCODE_MIN = 10, 100  # 800 train images in 10 clusters: some are smaller than 100 and get repeated


@pytest.fixture(scope="session")
def encoded(tmp_path_factory, prepared, cfe_checkpoint):
    """cfe.encode run once on the synthetic dataset. Attributes: out, dataset, dim, clusters, min_size, path[split]
    for train/val/test/train_clusters/train_emb."""
    from cfe import encode

    out = tmp_path_factory.mktemp("encoded") / "caches"
    encode.main(["--checkpoint", str(cfe_checkpoint), "--data-dir", str(prepared.root), "--dataset", prepared.name,
                 "--out", str(out), "--clusters", str(ENCODE_K), "--niter", "10",
                 "--min-cluster-size", str(ENCODE_MIN), "--device", "cpu", "--threads", "1"])
    dim = TINY_CFE["dim"]
    names = ("train", "val", "test", "train_clusters", "train_emb")
    return SimpleNamespace(out=out, dataset=prepared.name, dim=dim, clusters=ENCODE_K, min_size=ENCODE_MIN,
                           path={s: encoded_path(out, prepared.name, dim, ENCODE_K, s) for s in names})


@dataclass
class CliResult:
    code: int  # 0 when main returned normally, else the SystemExit status (2 for a UserError)
    out: str
    err: str


@pytest.fixture
def run_main(capsys):
    """run_main("cfe.train", [...]) -> CliResult: runs the module's main(argv) in-process through cli_main, as
    `python -m module` would, and captures its output. Any exception other than UserError propagates."""
    def run(module: str, argv) -> CliResult:
        main = importlib.import_module(module).main
        capsys.readouterr()
        try:
            cli_main(main, [str(a) for a in argv])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)
    return run


def run_and_kill(module: str, argv, watch, timeout: float = 300.0) -> None:
    """A real interruption: start `python -m module argv` from the repository root as a process of its own and
    SIGKILL it (no chance to clean up) as soon as the file `watch` exists (e.g. the run's checkpoints/last.pt).
    Fails, with the process's output, if it ended before that (crashed, or finished so there was nothing left to
    interrupt) or `watch` did not appear within `timeout` seconds."""
    watch = Path(watch)
    with tempfile.TemporaryFile("w+") as log:
        def output():
            log.seek(0)
            return log.read()

        proc = subprocess.Popen([sys.executable, "-m", module, *map(str, argv)], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not watch.exists():
                assert proc.poll() is None, f"{module} ended before {watch} existed:\n{output()}"
                assert time.monotonic() < deadline, f"no {watch} within {timeout:.0f} s:\n{output()}"
                time.sleep(0.005)
            assert proc.poll() is None, f"{module} finished before it could be killed:\n{output()}"
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"{module} was not killed:\n{output()}"


def files_under(root) -> dict:
    """{relative path: (size, mtime_ns)} of every file below root (hidden ones included); {} if root is absent."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def file_bytes(root) -> dict:
    """{relative path: bytes} of every file below root: what files_under's sizes and times cannot prove unchanged."""
    return {str(p.relative_to(root)): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


@pytest.fixture
def fake_git(monkeypatch):
    """git_commit() answers whatever `head["commit"]` holds; provenance's captured value is cleared around the test."""
    head = {"commit": "at-start"}
    monkeypatch.setattr(fio, "git_commit", lambda: head["commit"])
    fio._provenance.cache_clear()
    yield head
    fio._provenance.cache_clear()


def assert_same(a, b, where="", tol=None):
    """Nested checkpoint entries (dicts, lists, tensors, numbers) equal bit for bit; with `tol`, float tensors
    equal to that relative and absolute tolerance (integers still exactly)."""
    if isinstance(a, torch.Tensor) and tol is not None and a.is_floating_point():
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}", tol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}", tol)
    else:
        assert a == b, where
