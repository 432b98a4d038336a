"""Checkpoints: one dict holding everything a run needs to resume (after dino's `utils.restart_from_checkpoint`).

    {"kind": "cfe" | "maml", "arch": {...}, "model": state_dict, "optimizer": state_dict, "epoch": int,
     "config": {...JSON-able...}, ...stage extras}

Only plain containers and tensors go in (never an argparse Namespace), so `torch.load(weights_only=True)` reads
them. Loading checks the kind and loads state dicts strictly: a checkpoint of another model is a clear error.
"""

from pathlib import Path

import torch

from fewshot.errors import UserError
from fewshot.io import save_torch


def snapshot_path(run, epoch: int) -> Path:
    """Where a training run keeps its snapshot of an epoch: RUN/checkpoints/epoch_NNNN.pt (scripts spell it too)."""
    return Path(run) / "checkpoints" / f"epoch_{epoch:04d}.pt"


def save_checkpoint(path, kind: str, **state) -> None:
    save_torch(path, {"kind": kind, **state})


def load_checkpoint(path, kind: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file makes the unpickler raise almost anything (KeyError, ...)
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise UserError(f"{path}: not a checkpoint of this project (no 'kind' entry)")
    if ckpt["kind"] != kind:
        raise UserError(f"{path}: is a '{ckpt['kind']}' checkpoint, expected '{kind}'")
    return ckpt


def load_state(module: torch.nn.Module, state: dict, path) -> None:
    """Strict load that reports a mismatch in one line instead of a long traceback."""
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds no weights (expected a state dict, got {type(state).__name__})")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"{path}: weights do not fit this model ({first})") from None
