"""Devices, threads and seeds."""

import os
import random

import numpy as np
import torch

from fewshot.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


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
