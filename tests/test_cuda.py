"""The CUDA code paths: each stage runs on a GPU, repeats itself bit for bit there (same seed, and resumed against
uninterrupted), and computes what it computes on the CPU. Skipped on machines without CUDA (CI has none).

Interruptions are made as the CPU tests make them: a cfe run rewound to a mid-run snapshot (tests/cfe/test_train.py
stopped_after), a maml run trained for fewer --epochs and then resumed with more."""

import json

import numpy as np
import pytest
import torch

from cfe import encode
from cfe import train as cfe_train
from cfe.model import CFE, load_cfe
from fewshot.checkpoint import load_checkpoint
from fewshot.io import read_jsonl
from tests.cfe.test_train import EPOCHS as CFE_EPOCHS
from tests.cfe.test_train import args as cfe_args
from tests.cfe.test_train import stopped_after
from tests.conftest import TINY_CFE, assert_same
from tests.maml.test_maml import meta_grad, tiny_problem
from tests.maml.test_train import load, toy_caches
from tests.maml.test_train import run as maml_run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


CUDA = ("--device", "cuda")  # appended to the CPU tests' command lines: argparse keeps the last --device


def test_cfe_train_on_cuda_resumes_bit_identically(images_only, tmp_path):
    whole, again = tmp_path / "whole", tmp_path / "again"
    cfe_train.main(cfe_args(images_only, whole, *CUDA))
    cfe_train.main(cfe_args(images_only, again, *CUDA))
    # the run as it stood right after epoch 2 (its snapshot as last.pt), resumed from there
    stopped = stopped_after(whole, 2, tmp_path / "stopped")
    assert load_checkpoint(stopped / "checkpoints" / "last.pt", "cfe")["epoch"] == 2 < CFE_EPOCHS
    cfe_train.main(cfe_args(images_only, stopped, "--resume", *CUDA))
    assert [r["resumed"] for r in read_jsonl(stopped / "invocations.jsonl")] == [False, True]
    a = load_checkpoint(whole / "checkpoints" / "last.pt", "cfe")
    assert a["epoch"] == CFE_EPOCHS
    for other in (again, stopped):
        b = load_checkpoint(other / "checkpoints" / "last.pt", "cfe")
        assert b["epoch"] == CFE_EPOCHS
        for key in ("model", "optimizer", "scheduler"):
            assert_same(a[key], b[key], f"{other.name}/{key}")
    assert a["config"]["device"] == "cuda"
    # a GPU-trained checkpoint embeds on a machine without one
    assert load_cfe(whole / "checkpoints" / "last.pt", "cpu").queue.device.type == "cpu"


def test_cfe_forward_on_cuda_matches_cpu(prepared):
    torch.manual_seed(0)
    model = CFE(**TINY_CFE).eval()
    X = prepared.X["train"][:64]
    cpu = encode.embed(model, X, 32, torch.device("cpu"))
    gpu = encode.embed(model.to("cuda"), X, 32, torch.device("cuda"))
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def test_maml_meta_gradient_on_cuda_matches_cpu_in_float64():
    model, tasks = tiny_problem()
    grads = [meta_grad(model.to(device), [tuple(t.to(device) for t in task) for task in tasks], False).cpu()
             for device in ("cpu", "cuda")]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return toy_caches(tmp_path_factory.mktemp("cuda_toy"))


def test_maml_train_and_test_on_cuda_repeat_bit_identically(caches, tmp_path, run_main):
    whole, shorter = tmp_path / "whole", tmp_path / "shorter"
    maml_run(caches, whole, *CUDA)  # 3 epochs, PEM from epoch 2
    maml_run(caches, shorter, "--epochs", 1, *CUDA)
    assert load(shorter)["epoch"] == 1
    maml_run(caches, shorter, "--resume", *CUDA)  # grows to the 3 epochs of the whole run
    a, b = load(whole), load(shorter)
    assert a["epoch"] == b["epoch"] == 3
    for key in ("model", "eval_model", "optimizer", "best_acc", "selection"):
        assert_same(a[key], b[key], key)
    assert [r["pem_rebuilt_batches"] for r in read_jsonl(whole / "metrics.jsonl")] == [0, 3, 3]
    assert a["config"]["device"] == "cuda"
    results = []
    for _ in range(2):
        res = run_main("maml.test", ["--run", whole, "--cache", caches["val"], "--tasks", "4", "--steps", "2",
                                     "--threads", "1", "--device", "cuda", "--output", tmp_path / "test.json"])
        assert res.code == 0, res.err
        results.append(json.loads((tmp_path / "test.json").read_text())["per_task_accuracy"])
    assert len(results[0]) == 4 and results[0] == results[1]
