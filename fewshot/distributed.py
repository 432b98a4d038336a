"""torch.distributed for the stages that scale out under torchrun (docs/design.md, "Scale-out").

    torchrun --nproc_per_node=4 -m cfe.train ...                          # one machine, 4 processes
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m cfe.train ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init` reads them, picks NCCL on GPUs (one per local rank) and gloo
on CPUs. Launched as plain `python -m ...` (or by torchrun with one process) a stage is one process: `init` returns
World() and every collective below returns its input unchanged, so the stages call them unconditionally.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fewshot.errors import UserError
from fewshot.runtime import pick_device


@dataclass(frozen=True)
class World:
    """This process's place among the ranks."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files, logs and progress bars."""
        return self.rank == 0


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        raise UserError(f"{name}={os.environ.get(name)!r}: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; "
                        f"launch with torchrun, or unset WORLD_SIZE for one process") from None


def launched() -> bool:
    """Whether torchrun (or another launcher with its variables) started more than one process."""
    return "WORLD_SIZE" in os.environ and os.environ["WORLD_SIZE"] != "1"


def init(device_arg: str = "auto") -> tuple:
    """(World, torch.device) of this process. Under torchrun: one GPU per local rank when the device is a GPU
    (`auto` on a GPU machine, `cuda`), else the CPU; the process group is joined with NCCL or gloo accordingly."""
    if not launched():
        return World(), pick_device(device_arg)
    world = World(_env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK"))
    device = pick_device(device_arg)
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {world.local_rank} but {torch.cuda.device_count()} GPUs on this node: "
                            f"--nproc_per_node may be at most the number of GPUs")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size,
                                device_id=device if device.type == "cuda" else None)
    return world, device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


@torch.no_grad()
def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Equal-shaped tensors of every rank, concatenated along dim 0 in rank order (no gradient flows back)."""
    if not active():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_mean_(tensors) -> None:
    """Average tensors (a list; gradients or buffers) across ranks in place, through one flat buffer: one
    collective per call rather than one per tensor."""
    tensors = [t for t in tensors if t is not None]
    if not active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(torch.float64 if t.dtype == torch.float64 else torch.float32)
                      for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def broadcast_object(obj, src: int = 0):
    """Rank src's Python object on every rank (e.g. a decision only rank 0 can take)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
