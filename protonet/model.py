"""The prototypical network and its loss (Snell et al. 2017, "Prototypical Networks for Few-shot Learning").

A task's prototype of way w is the mean embedding of w's support images; a query's logit for w is minus its
squared Euclidean distance to that prototype, and the loss is the cross-entropy of the queries over these logits
(eq. 1-2 of the paper). The functions take embeddings with any leading batch dimensions (T tasks of one shape),
so training (one task) and testing (T tasks together) share them.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from fewshot.backbones import make_backbone

IMAGES_PER_PASS = 256  # predict's backbone passes (eval mode: each image on its own, so chunks change nothing)


class ProtoNet(nn.Module):
    """A backbone of fewshot.backbones as the embedding f_phi; nothing else is learnt."""

    def __init__(self, backbone: str, in_channels: int, hidden: int, image_size: int):
        super().__init__()
        self.arch = dict(backbone=backbone, in_channels=in_channels, hidden=hidden, image_size=image_size)
        self.backbone = make_backbone(backbone, in_channels, hidden)

    def forward(self, x):  # x: NxCxHxW float -> NxD
        return self.backbone(x)


def prototypes(z: torch.Tensor, y: torch.Tensor, ways: int) -> torch.Tensor:
    """The mean embedding of each way's support images: z (..., S, D), labels y (..., S) in 0..ways-1 ->
    (..., ways, D). Every way must have a support image (a task's always do)."""
    onehot = F.one_hot(y, ways).to(z.dtype)  # ..., S, W
    return onehot.transpose(-1, -2) @ z / onehot.sum(-2)[..., None]


def squared_distances(zq: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """||zq_i - c_w||^2 of every query and prototype: (..., Q, D), (..., W, D) -> (..., Q, W). Computed from the
    differences, not as |q|^2 - 2 q.c + |c|^2, which loses precision (and can go negative) for close points."""
    return (zq[..., :, None, :] - protos[..., None, :, :]).pow(2).sum(-1)


def proto_logits(zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
    """The queries' logits, minus their squared distances to the class-mean prototypes: (..., Q, ways)."""
    return -squared_distances(zq, prototypes(zs, ys, ways))


def proto_loss(zs: torch.Tensor, ys: torch.Tensor, zq: torch.Tensor, yq: torch.Tensor, ways: int):
    """(loss, query accuracy) of one task from its embeddings: zs (S, D) with labels ys (S), zq (Q, D) with
    labels yq (Q). The loss is the mean over the queries of -log softmax_w(-||zq - c_w||^2)[yq]."""
    logits = proto_logits(zs, ys, zq, ways)
    return F.cross_entropy(logits, yq), (logits.argmax(-1) == yq).float().mean().item()


def episode_loss(model: ProtoNet, xs, ys, xq, yq, ways: int):
    """(loss, query accuracy) of one task of images: support and query images go through the network together
    (in training mode, so BatchNorm normalises by the whole task's statistics, as Snell et al.'s code does)."""
    z = model(torch.cat([xs, xq]))
    return proto_loss(z[:len(xs)], ys, z[len(xs):], yq, ways)


@torch.no_grad()
def predict(model: ProtoNet, xs, ys, xq, ways: int) -> torch.Tensor:
    """Predicted labels (T x Q) of the queries of T tasks of one shape: xs T x S x C x H x W, ys T x S,
    xq T x Q x C x H x W. In eval mode (running BatchNorm statistics), each image is embedded on its own."""
    t, s = xs.shape[:2]
    x = torch.cat([xs, xq], 1).flatten(0, 1)  # (T*(S+Q)) x C x H x W
    z = torch.cat([model(chunk) for chunk in x.split(IMAGES_PER_PASS)]).view(t, s + xq.shape[1], -1)
    return proto_logits(z[:, :s], ys, z[:, s:], ways).argmax(-1)
