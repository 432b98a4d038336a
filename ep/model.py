"""The EP network and its three losses (docs/design.md, "EP").

Follows upstream's src/models/pretraining.py and finetuning.py (ServiceNow/embedding-propagation):
- pre-training: every image in its four rotations; the rotation head predicts the rotation from the embedding,
  the classifier predicts the (pseudo-)class from the embedding propagated over the whole batch;
- episodic fine-tuning: label propagation over the propagated embeddings of a task's support and query images,
  cross-entropy of the queries, plus 0.1 x the classifier's cross-entropy of every image (not propagated);
- test: label propagation over support, query and unlabelled images, in eval mode (running BatchNorm statistics).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ep.propagation import embedding_propagation, label_propagation, label_propagation_logits
from fewshot.backbones import make_backbone

ROTATIONS = 4
IMAGES_PER_PASS = 256  # predict's backbone passes


class EPNet(nn.Module):
    """Backbone + classifier over the training (pseudo-)classes + 4-way rotation head."""

    def __init__(self, backbone: str, in_channels: int, hidden: int, image_size: int, classes: int):
        super().__init__()
        self.arch = dict(backbone=backbone, in_channels=in_channels, hidden=hidden, image_size=image_size,
                         classes=classes)
        self.backbone = make_backbone(backbone, in_channels, hidden)
        dim = self.backbone.out_dim(image_size)
        self.classifier = nn.Linear(dim, classes)
        self.rotation = nn.Linear(dim, ROTATIONS)

    def forward(self, x):  # x: NxCxHxW float -> NxD
        return self.backbone(x)


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image in its four rotations by 0, 90, 180 and 270 degrees: NxCxHxW -> (4N)xCxHxW, rotation labels 4N."""
    assert x.shape[-1] == x.shape[-2], f"rotations need square images, got {tuple(x.shape)}"
    x4 = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)])
    return x4, torch.arange(ROTATIONS, device=x.device).repeat_interleave(len(x))


def pretrain_loss(model: EPNet, x: torch.Tensor, y: torch.Tensor, rotation_weight: float = 1.0):
    """(loss, classifier accuracy) of a batch x (NxCxHxW) with (pseudo-)labels y (N)."""
    x4, r = rotations(x)
    z = model(x4)  # 4N x D
    loss = rotation_weight * F.cross_entropy(model.rotation(z), r) if rotation_weight else 0.0
    logits = model.classifier(embedding_propagation(z[None])[0])  # 4N x classes
    y4 = y.repeat(ROTATIONS)
    loss = loss + F.cross_entropy(logits, y4)
    return loss, (logits.argmax(-1) == y4).float().mean().item()


def episode_loss(model: EPNet, xs, ys, xq, yq, classes_s, classes_q, ways: int, classifier_weight: float = 0.1):
    """(loss, query accuracy) of one task: label propagation's cross-entropy of the queries + classifier_weight x
    the classifier's cross-entropy of all images with their (pseudo-)classes classes_s, classes_q."""
    z = model(torch.cat([xs, xq]))  # (S+Q) x D
    labels = torch.cat([ys, torch.full_like(yq, -1)])  # the queries are unlabelled in the graph
    logits = label_propagation_logits(embedding_propagation(z[None]), labels[None], ways)[0, len(xs):]
    loss = F.cross_entropy(logits, yq)
    if classifier_weight:
        loss = loss + classifier_weight * F.cross_entropy(model.classifier(z), torch.cat([classes_s, classes_q]))
    return loss, (logits.argmax(-1) == yq).float().mean().item()


@torch.no_grad()
def predict(model: EPNet, xs, ys, xq, xu, ways: int) -> torch.Tensor:
    """Predicted labels (T x Q) of the queries of T tasks of one shape, given their support sets and unlabelled
    images, which join the graph as the queries do. xs: T x S x C x H x W, ys: T x S, xq: T x Q x C x H x W,
    xu: T x U x C x H x W (U may be 0)."""
    t, s, q = xs.shape[0], xs.shape[1], xq.shape[1]
    x = torch.cat([xs, xq, xu], 1)  # T x n x C x H x W
    # T x n x D; in eval mode each image on its own, so in chunks: one pass over thousands of images is slower on
    # a CPU (its activations leave the caches) than passes over a few hundred
    z = torch.cat([model(chunk) for chunk in x.flatten(0, 1).split(IMAGES_PER_PASS)]).view(t, x.shape[1], -1)
    labels = torch.cat([ys, ys.new_full((t, x.shape[1] - s), -1)], 1)  # T x n
    return label_propagation(embedding_propagation(z), labels, ways)[:, s:s + q].argmax(-1)
