"""Devices, threads and seeds."""

import os
import random

import numpy as np
import torch

from fewshot.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    device = _resolve_device(name)
    if device.type == "cuda":
        # NOTE: cuDNN's autotuner may pick a different convolution kernel on every run, and some of its kernels
        # accumulate in a varying order; fixed deterministic kernels keep "same seed, same numbers" on a GPU
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return device


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device name (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: only cpu, cuda and mps are supported")
    return device


def seed_everything(seed: int) -> None:
    """Seeds the global generators for model initialisation. Data order, augmentation and episode sampling use
    their own generators seeded from (seed, epoch), so a resumed run draws exactly what an uninterrupted one would."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 101 + stream) % (2**63)


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
