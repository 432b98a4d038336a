"""Which model of a maml.train run maml.test evaluates: `--checkpoint` best (the run's selection), last, a
checkpoint path, or best@N (the model a run of N epochs would have selected), loaded for the test's ways."""

import re
from pathlib import Path

import torch

from fewshot.checkpoint import load_checkpoint, load_state, snapshot_path
from fewshot.errors import UserError
from fewshot.io import read_jsonl
from maml.common import selection_score
from maml.maml import MAMLNet

BUDGET = re.compile(r"best@([1-9][0-9]*)")  # --checkpoint best@N
ARCH_KEYS = {"in_channels", "hidden", "image_size", "n_way"}  # MAMLNet's arguments, as maml.train saves them


def checkpoint_path(run: Path, name: str) -> Path:
    return run / "checkpoints" / f"{name}.pt" if name in ("best", "last") else Path(name)


def budget_snapshot(run: Path, cfg: dict, budget: int) -> tuple[Path, int]:
    """(snapshot path, epoch) of `--checkpoint best@N`: the model this run would have selected had it meta-trained
    N epochs, so shorter budgets are tested without training again. Nothing in an epoch depends on the total
    budget (Adam's rate is constant, the tasks come from the seed and the epoch), so the first N epochs of a
    longer run are those of an N-epoch run of the same seed, and its selection is the epoch with the highest val
    accuracy among the first N, the later on a tie (as maml.train keeps; the latest without a val split).
    That epoch's model must have been kept: its snapshot (train with --save-every 1 to test any budget), or
    best.pt or last.pt when they hold that epoch (e.g. best@N of the run's own N epochs)."""
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{metrics}: not found; best@N reads the run's val accuracies from it")
    rows = {r.get("epoch"): r for r in read_jsonl(metrics) if isinstance(r, dict)}
    if any(e not in rows for e in range(1, budget + 1)):
        raise UserError(f"{metrics}: holds {len(rows)} epochs; best@{budget} needs epochs 1 to {budget}")
    score = {e: selection_score(rows[e]) for e in range(1, budget + 1)}
    if not all(isinstance(v, (int, float)) for v in score.values()):
        raise UserError(f"{metrics}: a val_acc among epochs 1 to {budget} is not a number")
    epoch = max(score, key=lambda e: (score[e], e))
    path = snapshot_path(run, epoch)
    if path.is_file():
        return path, epoch
    for kept in (run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"):
        if kept.is_file() and load_checkpoint(kept, "maml", required=("epoch",))["epoch"] == epoch:
            return kept, epoch
    raise UserError(f"{path}: not found; best@{budget} selects epoch {epoch}, whose snapshot the run did not "
                    f"keep (it kept every {cfg['save_every']}); train with --save-every 1")


def pick_checkpoint(run: Path, cfg: dict, name: str) -> tuple:
    """(checkpoint dict, its path, its tag for the result's file name (None for the run's selection), how it was
    selected) of `--checkpoint name`."""
    budget = BUDGET.fullmatch(name)
    path, epoch = budget_snapshot(run, cfg, int(budget[1])) if budget else (checkpoint_path(run, name), None)
    selected = path.resolve() == (run / "checkpoints" / "best.pt").resolve()
    ckpt = load_checkpoint(path, "maml", required=("model", "arch", "epoch") + (("selection",) if selected else ()))
    if budget:
        if ckpt["epoch"] != epoch:
            raise UserError(f"{path}: holds epoch {ckpt['epoch']}, not {epoch} as its name says")
        return ckpt, path, name, f"the selection within the first {budget[1]} epochs ({path.name})"
    if selected:
        return ckpt, path, None, ckpt["selection"]
    return ckpt, path, path, f"{path.stem} checkpoint, not the run's selection"


def checked_arch(ckpt: dict, path) -> dict:
    arch = ckpt["arch"]
    if not isinstance(arch, dict) or set(arch) != ARCH_KEYS:
        raise UserError(f"{path}: its 'arch' entry is not a MAML architecture (expected {sorted(ARCH_KEYS)})")
    return dict(arch)


def build_model(ckpt: dict, arch: dict, ways: int, path, device) -> tuple:
    """(model, head): the checkpoint's model for `ways`-way tasks, and how its classifier head was set up."""
    state, head = ckpt["model"], f"trained ({arch['n_way']} ways)"
    if ways != arch["n_way"] and isinstance(state, dict) and "classifier.weight" in state:
        # MAML's head has one output per way; a different N needs a head of that size, freshly zeroed
        # (zero init, as in "MAML with zero-initialised heads", keeps the adapted model label-symmetric).
        state = {**state, "classifier.weight": torch.zeros(ways, *state["classifier.weight"].shape[1:]),
                 "classifier.bias": torch.zeros(ways)}
        head = f"zero-initialised for {ways} ways (trained with {arch['n_way']})"
    model = MAMLNet(**{**arch, "n_way": ways}).to(device)
    load_state(model, state, path)
    return model, head
