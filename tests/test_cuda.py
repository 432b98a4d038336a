"""The CUDA code paths: each stage runs on a GPU, repeats itself bit for bit there (same seed, and resumed against
uninterrupted), and computes what it computes on the CPU. Skipped on machines without CUDA (CI has none)."""

import json

import numpy as np
import pytest
import torch

from cfe import encode
from cfe import train as cfe_train
from cfe.model import CFE
from fewshot.checkpoint import load_checkpoint
from tests.cfe.test_train import args as cfe_args
from tests.conftest import TINY_CFE
from tests.maml.test_maml import meta_grad, tiny_problem
from tests.maml.test_train import assert_same, load, toy_caches
from tests.maml.test_train import run as maml_run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


CUDA = ("--device", "cuda")  # appended to the CPU tests' command lines: argparse keeps the last --device


def test_cfe_train_on_cuda_resumes_bit_identically(images_only, tmp_path):
    whole, again, halted = tmp_path / "whole", tmp_path / "again", tmp_path / "halted"
    cfe_train.main(cfe_args(images_only, whole, *CUDA))
    cfe_train.main(cfe_args(images_only, again, *CUDA))
    cfe_train.main(cfe_args(images_only, halted, "--halt-after", 1, *CUDA))
    cfe_train.main(cfe_args(images_only, halted, "--resume", *CUDA))
    a = load_checkpoint(whole / "checkpoints" / "last.pt", "cfe")
    for other in (again, halted):
        b = load_checkpoint(other / "checkpoints" / "last.pt", "cfe")
        assert_same(a["model"], b["model"], f"{other.name}/model")
        assert_same(a["optimizer"], b["optimizer"], f"{other.name}/optimizer")
    assert a["config"]["device"] == "cuda"
    # a GPU-trained checkpoint embeds on a machine without one
    assert cfe_train.load_cfe(whole / "checkpoints" / "last.pt", "cpu").queue.device.type == "cpu"


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
    whole, halted = tmp_path / "whole", tmp_path / "halted"
    for out, extra in ((whole, []), (halted, ["--halt-after", "1"]), (halted, ["--resume"])):
        maml_run(caches, out, *extra, *CUDA)
    a, b = load(whole), load(halted)
    for key in ("model", "eval_model", "optimizer", "best_acc", "selection"):
        assert_same(a[key], b[key], key)
    assert a["config"]["device"] == "cuda"
    results = []
    for _ in range(2):
        res = run_main("maml.test", ["--run", whole, "--cache", caches["val"], "--tasks", "4", "--steps", "2",
                                     "--threads", "1", "--device", "cuda", "--output", tmp_path / "test.json"])
        assert res.code == 0, res.err
        results.append(json.loads((tmp_path / "test.json").read_text())["per_task_accuracy"])
    assert len(results[0]) == 4 and results[0] == results[1]
