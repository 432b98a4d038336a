"""fewshot.runtime: device choice and what it sets up, per-epoch seeds."""

import pytest
import torch

from fewshot.errors import UserError
from fewshot.runtime import epoch_seed, pick_device


@pytest.fixture
def cudnn_flags():
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def test_a_cuda_device_gets_deterministic_cudnn_kernels(monkeypatch, cudnn_flags):
    """Without them the same seed could give other numbers on the same GPU (autotuned or atomic-add kernels)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    assert pick_device("cuda:0") == torch.device("cuda:0")
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_auto_falls_back_to_the_cpu_and_leaves_cudnn_alone(monkeypatch, cudnn_flags):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    assert pick_device("auto") == torch.device("cpu")
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic


@pytest.mark.parametrize("name, message", [("gpu", "not a device name"), ("xla", "only cpu, cuda and mps"),
                                           ("cuda:3", "this machine has 1 CUDA device(s)")])
def test_bad_device_names_are_one_line_errors(monkeypatch, name, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pick_device(name)


def test_epoch_seeds_differ_by_epoch_stream_and_seed():
    seeds = {epoch_seed(s, e, k) for s in range(3) for e in range(50) for k in range(3)}
    assert len(seeds) == 3 * 50 * 3
