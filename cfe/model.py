"""The CFE model: a MoCo pair of encoders that owns its queue (after facebookresearch/moco moco/builder.py), and
`load_cfe`, which rebuilds one from a cfe checkpoint (docs/design.md, algorithms: CFE)."""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from cfe.loss import cfe_loss
from fewshot.backbones import make_backbone
from fewshot.checkpoint import load_checkpoint, load_state
from fewshot.errors import UserError


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
    batch, keys shuffled across the splits, and one loss per split (cfe/loss.py)."""

    def __init__(self, in_channels=1, hidden=64, image_size=28, dim=64, mlp=True, queue_size=16384, momentum=0.999,
                 temperature=0.2, bn_splits=1, backbone="conv4"):
        super().__init__()
        self.arch = dict(backbone=backbone, in_channels=in_channels, hidden=hidden, image_size=image_size, dim=dim,
                         mlp=mlp, queue_size=queue_size, momentum=momentum, temperature=temperature,
                         bn_splits=bn_splits)
        self.momentum, self.temperature, self.bn_splits = momentum, temperature, bn_splits
        self.encoder_q = make_encoder(backbone, in_channels, hidden, image_size, dim, mlp, bn_splits)
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

    def embed(self, x):
        """Normalised embedding of f_q (head included, as upstream encodes): NxC."""
        return F.normalize(self.encoder_q(x), dim=1)

    def forward(self, x1, x2, gen=None):
        """Two views of the same N images -> scalar loss; updates f_k and the queue as side effects.
        `gen` draws the key shuffle when BatchNorm is split."""
        q = self.embed(x1)  # queries: NxC
        with torch.no_grad():
            self.momentum_update()
            if self.bn_splits > 1:
                # as MoCo's shuffle BN across GPUs (moco/builder.py _batch_shuffle_ddp): a key is normalised
                # with other images than its query, so matching BN statistics cannot identify the positive
                order = torch.randperm(x2.shape[0], generator=gen, device=x2.device)
                k = torch.empty_like(q)
                k[order] = F.normalize(self.encoder_k(x2[order]), dim=1)  # keys: NxC, back in batch order
            else:  # one BatchNorm over the batch: nothing to shuffle across
                k = F.normalize(self.encoder_k(x2), dim=1)  # keys: NxC
        # enqueue overwrites the queue in place right after; cfe_loss copies it into its key matrix (torch.cat)
        # first, so its backward is unaffected (tests/cfe/test_model.py checks the gradients)
        loss = cfe_loss(q, k, self.queue, self.temperature, groups=self.bn_splits)
        self.enqueue(k)
        return loss


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
