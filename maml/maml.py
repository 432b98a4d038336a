"""MAML (Finn et al. 2017) with `torch.func.functional_call`, looping over tasks.

The inner loop takes `steps` SGD steps of size `lr` on the support loss from the shared initialisation; the
outer loss is the query loss of the adapted weights. Second-order by default: the inner gradients keep their
graph (`create_graph=True`) so the meta-gradient flows through them; `first_order` drops that graph (FOMAML).

NOTE: batch norm always normalises with the statistics of the current batch (no running statistics), in
meta-training and at test alike, as upstream (torchmeta MetaBatchNorm2d with track_running_stats=False). So a
task's query predictions depend on the other queries of the same forward pass (transductive, as in the
literature's MAML numbers). We do not `vmap` over tasks: with batch norm it gives wrong gradients.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from fewshot.backbones import Conv4


class MAMLNet(nn.Module):
    """Conv4 (batch statistics only) + linear classifier over the ways (torchmeta ModelConvOmniglot)."""

    def __init__(self, in_channels=1, hidden=64, image_size=28, n_way=5):
        super().__init__()
        self.arch = dict(in_channels=in_channels, hidden=hidden, image_size=image_size, n_way=n_way)
        self.features = Conv4(in_channels, hidden, track_running_stats=False)
        self.classifier = nn.Linear(self.features.out_dim(image_size), n_way)

    def forward(self, x):  # x: NxCxHxW -> N x n_way logits
        return self.classifier(self.features(x))


def adapt(model, params: dict, x, y, steps: int, lr: float, create_graph: bool) -> dict:
    """`steps` SGD steps on the cross-entropy of (x, y) starting from `params`; returns the adapted params."""
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
        if not create_graph:  # evaluation: no graph back to the initialisation, so memory stays flat
            params = {name: p.detach().requires_grad_() for name, p in params.items()}
    return params


def meta_loss(model, tasks, steps: int, lr: float, first_order: bool = False):
    """Mean query loss and accuracy over tasks [(xs, ys, xq, yq), ...] after adapting on each support set.
    The loss keeps the graph to the initialisation (through the inner gradients unless first_order)."""
    params = dict(model.named_parameters())
    losses, accs = [], []
    for xs, ys, xq, yq in tasks:
        adapted = adapt(model, params, xs, ys, steps, lr, create_graph=not first_order)
        if first_order:  # FOMAML: adapt returned detached leaves; the query gradient at them goes to the init
            adapted = {n: params[n] + (a - params[n]).detach() for n, a in adapted.items()}
        logits = functional_call(model, adapted, (xq,))
        losses.append(F.cross_entropy(logits, yq))
        accs.append((logits.argmax(1) == yq).float().mean())
    return torch.stack(losses).mean(), torch.stack(accs).mean().item()


def evaluate_task(model, xs, ys, xq, yq, steps: int, lr: float) -> tuple[float, torch.Tensor]:
    """Adapt a copy of the initialisation on the support set, return (query accuracy, query logits)."""
    params = {n: p.detach().requires_grad_() for n, p in model.named_parameters()}
    with torch.enable_grad():
        adapted = adapt(model, params, xs, ys, steps, lr, create_graph=False)
    with torch.no_grad():
        logits = functional_call(model, adapted, (xq,))
    return (logits.argmax(1) == yq).float().mean().item(), logits
