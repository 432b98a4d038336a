"""Checkpoints: one dict holding everything a run needs to resume (after dino's `utils.restart_from_checkpoint`).

    {"kind": "cfe" | "maml" | "ep" | "protonet", "arch": {...}, "model": state_dict, "optimizer": state_dict,
     "epoch": int, "config": {...JSON-able...}, ...stage extras}

Only plain containers and tensors go in (never an argparse Namespace), so `torch.load(weights_only=True)` reads
them. Loading checks the kind and loads state dicts strictly: a checkpoint of another model is a clear error.
"""

from pathlib import Path

import torch

from fewshot.errors import UserError, require_file
from fewshot.io import save_torch


def snapshot_path(run, epoch: int) -> Path:
    """Where a training run keeps its snapshot of an epoch: RUN/checkpoints/epoch_NNNN.pt (scripts spell it too)."""
    return Path(run) / "checkpoints" / f"epoch_{epoch:04d}.pt"


def save_checkpoint(path, kind: str, **state) -> None:
    save_torch(path, {"kind": kind, **state})


def save_epoch(out: Path, kind: str, epoch: int, save_every: int, improved: bool, state: dict) -> None:
    """best.pt when the epoch improved the selection score, a snapshot every save_every epochs, and last.pt
    last: a run killed in between redoes the epoch from the previous last.pt and writes the same files again."""
    if improved:
        save_checkpoint(Path(out) / "checkpoints" / "best.pt", kind, **state)
    if save_every and epoch % save_every == 0:
        save_checkpoint(snapshot_path(out, epoch), kind, **state)
    save_checkpoint(Path(out) / "checkpoints" / "last.pt", kind, **state)


def load_checkpoint(path, kind: str, required=("model",)) -> dict:
    """The checkpoint at `path`, which must be of `kind` and hold the `required` entries (every checkpoint holds
    weights; callers name what else they read, e.g. maml.test its "arch" and "epoch"). load_cfe checks its own
    "arch" entry, so the default asks for no more than a cfe checkpoint is sure to hold."""
    path = require_file(path, "checkpoint")
    with open(path, "rb") as f:
        magic = f.read(2)
    # torch.save writes a zip archive (PK), its legacy format a pickle (0x80); on anything else the unpickler's
    # error is cryptic (a text file gives "KeyError: 101")
    if not (magic == b"PK" or magic[:1] == b"\x80"):
        raise UserError(f"{path}: not a readable checkpoint (not a file written by torch.save)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file makes the unpickler raise almost anything (KeyError, ...)
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise UserError(f"{path}: not a checkpoint of this project (no 'kind' entry)")
    if ckpt["kind"] != kind:
        raise UserError(f"{path}: is a '{ckpt['kind']}' checkpoint, expected '{kind}'")
    missing = [key for key in required if key not in ckpt]
    if missing:
        raise UserError(f"{path}: {kind} checkpoint without {', '.join(repr(k) for k in missing)} "
                        f"(has {', '.join(sorted(map(str, ckpt)))})")
    return ckpt


def load_state(module: torch.nn.Module, state: dict, path) -> None:
    """Strict load that reports a mismatch in one line instead of a long traceback."""
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds no weights (expected a state dict, got {type(state).__name__})")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit this model ({_mismatch(e)})") from None


def _mismatch(e: RuntimeError, limit=200) -> str:
    """PyTorch's load_state_dict error without its header line ("Error(s) in loading state_dict for X:"), which
    names no key: the missing / unexpected keys and size mismatches that follow it, in one trimmed line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = "; ".join(lines[1:] or lines[:1])
    return text if len(text) <= limit else text[: limit - 3] + "..."
