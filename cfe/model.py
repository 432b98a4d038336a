"""The CFE model: a MoCo pair of encoders that owns its queue (after facebookresearch/moco moco/builder.py), trained
with the CFE loss or MoCo v2's (cfe.loss), and `load_cfe`, which rebuilds one from a cfe checkpoint (docs/design.md,
algorithms: CFE)."""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from cfe.loss import LOSSES, cfe_loss, moco_loss
from fewshot.backbones import forward_in_groups, make_backbone
from fewshot.checkpoint import load_checkpoint, load_state
from fewshot.distributed import World, all_gather_cat
from fewshot.errors import UserError

ONE_PROCESS = World()  # rank 0 of 1: plain `python -m`, and every model load_cfe rebuilds


def make_encoder(backbone, in_channels, hidden, image_size, dim, mlp, bn_splits=1):
    """Backbone (fewshot.backbones; `hidden` is conv4's) + projection head. With `mlp`, the MoCo v2 head:
    Linear-ReLU-Linear, as wide as the backbone's feature."""
    net = make_backbone(backbone, in_channels, hidden, bn_splits)
    feat = net.out_dim(image_size)
    head = nn.Sequential(nn.Linear(feat, feat), nn.ReLU(inplace=True), nn.Linear(feat, dim)) if mlp \
        else nn.Linear(feat, dim)
    return nn.Sequential(net, head)


class CFE(nn.Module):
    """f_q (trained), f_k (its moving average) and a queue of past keys.

    bn_splits > 1 emulates upstream's multi-GPU run in one process: BatchNorm statistics per 1/bn_splits of the
    batch, keys shuffled across the splits, and one loss per split (cfe/loss.py).

    Under torchrun, `world` is this process's place among the ranks (fewshot.distributed.World) and the model runs
    on its 1/world.size of the global batch; bn_splits stays the global number of BatchNorm groups (what `arch`
    records, so a checkpoint reads the same whatever the launch), of which this rank holds bn_splits / world.size.
    Keys are shuffled across all ranks and every rank's queue takes every rank's keys, so a run on N ranks is the
    same model as one process with the same global batch and bn_splits.

    `loss` names the loss (cfe.loss.LOSSES): "cfe", PL-CFE's, or "moco", MoCo v2's InfoNCE; `arch` records it, and
    an arch without it (a checkpoint from before the choice) builds the CFE loss, the only one there was."""

    def __init__(self, in_channels=1, hidden=64, image_size=28, dim=64, mlp=True, queue_size=16384, momentum=0.999,
                 temperature=0.2, bn_splits=1, backbone="conv4", loss="cfe", world=ONE_PROCESS):
        super().__init__()
        assert bn_splits % world.size == 0, f"{bn_splits} BatchNorm groups do not divide among {world.size} ranks"
        if loss not in LOSSES:  # a hand-made or future checkpoint: load_cfe turns this into its one-line error
            raise UserError(f"unknown loss {loss!r} (known: {', '.join(LOSSES)})")
        self.arch = dict(backbone=backbone, in_channels=in_channels, hidden=hidden, image_size=image_size, dim=dim,
                         mlp=mlp, queue_size=queue_size, momentum=momentum, temperature=temperature,
                         bn_splits=bn_splits, loss=loss)
        self.momentum, self.temperature, self.bn_splits, self.loss = momentum, temperature, bn_splits, loss
        self.world, self.local_splits = world, bn_splits // world.size
        self.encoder_q = make_encoder(backbone, in_channels, hidden, image_size, dim, mlp, self.local_splits)
        self.encoder_k = copy.deepcopy(self.encoder_q)  # starts equal to f_q, then follows it by EMA
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))  # KxC
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self):
        """f_k <- m f_k + (1 - m) f_q on the parameters (f_k's BN statistics are its own, as in MoCo)."""
        for pk, pq in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys):
        """Write keys (NxC) over the oldest queue entries, wrapping around the end."""
        n, k = keys.shape[0], self.queue.shape[0]
        assert n <= k, f"batch ({n}) larger than the queue ({k})"
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % k
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + n) % k)

    def running_statistics(self) -> list:
        """The BatchNorm running means and variances of f_q and f_k. Each rank's are the mean of its own groups'
        updates, linear in them, so their mean over the ranks is what one process over all groups holds."""
        return [b for enc in (self.encoder_q, self.encoder_k) for b in enc.buffers() if b.is_floating_point()]

    def embed(self, x):
        """Normalised embedding of f_q (head included, as upstream encodes): NxC, in float32 also under bfloat16
        autocast (keys like it enter the float32 queue)."""
        return F.normalize(forward_in_groups(self.encoder_q, x, self.local_splits).float(), dim=1)

    def forward(self, x1, x2, gen=None):
        """Two views of the same N images (this rank's share of the global batch) -> scalar loss (this rank's);
        updates f_k and the queue as side effects. `gen` draws the key shuffle when BatchNorm is split; under
        torchrun it must draw the same numbers on every rank."""
        q = self.embed(x1)  # queries: NxC
        with torch.no_grad():
            self.momentum_update()
            k, k_all = self.keys(x2, gen)  # NxC, and the global batch's: (world*N)xC
        # enqueue overwrites the queue in place right after; both losses copy it first (cfe_loss into its key
        # matrix, moco_loss by a clone), so their backward is unaffected (tests/cfe/test_model.py checks the
        # gradients). The name is looked up at each call, so that a test may replace either function.
        loss_fn = moco_loss if self.loss == "moco" else cfe_loss
        loss = loss_fn(q, k, self.queue, self.temperature, groups=self.local_splits)
        self.enqueue(k_all)  # every rank's keys: the ranks' queues stay equal
        return loss

    @torch.no_grad()
    def keys(self, x2, gen):
        """Normalised keys of this rank's views x2 (NxC) and of the global batch ((world*N)xC, in batch order)."""
        if self.bn_splits == 1:  # one BatchNorm over the batch (and one rank): nothing to shuffle across
            k = F.normalize(self.encoder_k(x2).float(), dim=1)  # keys: NxC
            return k, k
        # as MoCo's shuffle BN across GPUs (moco/builder.py _batch_shuffle_ddp / _batch_unshuffle_ddp): a key is
        # normalised with other images than its query, so matching BN statistics cannot identify the positive.
        # In one process the gathers return their input: the rank's slice is the whole batch.
        x_all = all_gather_cat(x2)  # (world*N)xCxHxW: every rank's views, in global batch order
        n, r = x2.shape[0], self.world.rank
        order = torch.randperm(x_all.shape[0], generator=gen, device=x2.device)  # the same on every rank
        k_all = torch.empty(x_all.shape[0], self.queue.shape[1], dtype=self.queue.dtype, device=x2.device)
        k = forward_in_groups(self.encoder_k, x_all[order[r * n:(r + 1) * n]], self.local_splits)
        k_all[order] = all_gather_cat(F.normalize(k.float(), dim=1))
        return k_all[r * n:(r + 1) * n], k_all


def check_fits(arch: dict, shape, where) -> None:
    """A one-line error unless images of HxWxC `shape` are what a CFE of `arch` embeds; `where` names them."""
    want = (arch["image_size"], arch["image_size"], arch["in_channels"])
    if tuple(shape) != want:
        raise UserError(f"{where}: images are {tuple(shape)}, the checkpoint expects {want}")


def load_cfe(path, device="cpu") -> CFE:
    """The trained model of a cfe checkpoint (its `arch`, then a strict weight load), in eval mode, ready to embed.
    Its `trained_epochs` is the checkpoint's epoch and its `train_config` cfe.train's resolved arguments (None in a
    checkpoint without them), both of which cfe.encode records beside its pseudo-labels."""
    ckpt = load_checkpoint(path, "cfe", required=("arch", "model"))
    try:  # an arch without "backbone" (checkpoints from before the choice) builds CFE's default, conv4
        model = CFE(**ckpt["arch"])
    except (TypeError, UserError) as e:  # a hand-made checkpoint, one of another version, an unknown backbone
        raise UserError(f"{path}: cfe checkpoint whose 'arch' does not build a CFE ({e})") from None
    load_state(model, ckpt["model"], path)
    model.trained_epochs = ckpt.get("epoch")
    model.train_config = ckpt.get("config")
    return model.to(device).eval()
