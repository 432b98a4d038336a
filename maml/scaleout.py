"""maml.train under torchrun (fewshot.distributed): which tasks a rank meta-learns and validates, and the exchanges,
besides averaging the meta-gradients, that keep every rank's decisions those of one process.

Every rank draws the whole meta-batch from the same generator and meta-learns a contiguous share of it; the val
tasks are split likewise and their accuracies gathered in task order. In one process the share is everything and
every exchange returns its input, so a plain run computes what it did before maml.train scaled out.
"""

import math
import os

import torch
import torch.distributed as dist

from fewshot.distributed import World, active, all_gather_cat, all_reduce_mean_, broadcast_object, launched
from fewshot.errors import UserError
from fewshot.io import prepare_run_dir


def launch_size() -> int:
    """How many processes torchrun started (1 without it), read before joining them (fewshot.distributed.init)."""
    size = os.environ.get("WORLD_SIZE", "1").strip()
    return int(size) if launched() and size.isdigit() else 1  # (init refuses a WORLD_SIZE that is no number)


def check_meta_batch(meta_batch: int) -> None:
    """Refused by every rank alike before it joins the others, so none waits for one that gave up."""
    size = launch_size()
    if meta_batch % size:
        raise UserError(f"--meta-batch {meta_batch} does not split over {size} processes (each meta-learns an equal "
                        f"share of its tasks); pass a multiple of {size}")


def share(world: World, n: int) -> slice:
    """This rank's contiguous ceil(n / size) of n tasks (the last ranks may get fewer, or none)."""
    per = math.ceil(n / world.size)
    return slice(min(n, world.rank * per), min(n, (world.rank + 1) * per))


def gather_objects(objs: list) -> list:
    """Every rank's list, concatenated in rank order."""
    if not active():
        return objs
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, objs)
    return [o for part in parts for o in part]


def gather_accuracies(accs, n: int, device) -> list:
    """The per-task accuracies of all n tasks in task order, from each rank's `share` of them. As float64, the
    values one process computes, bit for bit, so their mean and interval are those of one process."""
    if not active():
        return accs
    per = math.ceil(n / dist.get_world_size())
    mine = torch.full((per,), math.nan, dtype=torch.float64, device=device)  # all_gather_cat needs equal shapes
    mine[:len(accs)] = torch.as_tensor(accs, dtype=torch.float64)
    return all_gather_cat(mine)[:n].tolist()


def mean_over_ranks(values: list, device) -> list:
    """The ranks' mean of each value (as float64): with equal shares, of per-rank means, the meta-batch's mean."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    all_reduce_mean_([t])
    return t.tolist()


def prepare_on_main(world: World, out, config: dict, resume: bool, may_change) -> None:
    """prepare_run_dir on rank 0, the one process that writes; its refusal (another run in the folder, changed
    settings on --resume) is raised on every rank: a rank that went on would wait for rank 0 at the next collective
    until torchrun stopped it, and print no reason."""
    refused = None
    if world.main:
        try:
            prepare_run_dir(out, config, resume=resume, may_change=may_change)
        except UserError as e:
            refused = e
    message = broadcast_object(None if refused is None else str(refused))
    if refused is not None:
        raise refused
    if message is not None:
        raise UserError(message)
