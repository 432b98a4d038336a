"""The embedding losses as pure functions (docs/design.md, algorithms: CFE): the CFE loss, and MoCo v2's InfoNCE,
the plain contrastive embedding of the ablation (cfe.train --loss). Both take the same arguments, so that CFE's
forward pass calls either the same way."""

import torch
import torch.nn.functional as F

LOSSES = ("cfe", "moco")  # cfe.train --loss; a checkpoint whose arch names none was trained with "cfe"


def cfe_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float,
             groups: int = 1) -> torch.Tensor:
    """Cross-entropy that pulls each image's two views together against other images and the queue.

    q: NxC normalised query embeddings (with gradient); k: NxC normalised key embeddings (no gradient);
    queue: KxC past keys. With mu_n = (q_n + k_n) / 2, the logits of row n are
        [mu_n . sg(mu_m) for m in n's group] ++ [mu_n . sg(queue_j) for j in queue],
    divided by the temperature, and the target is column n: |mu_n|^2 (how much the views agree) must beat
    the similarity to every other image's centre and to the queue.

    The batch is `groups` consecutive groups, and a centre is compared only with the centres of its own group (and
    the whole queue), as upstream's 4-GPU run does: each GPU's loss sees its quarter of the batch (PL-CFE
    cfe/builder.py forward) and DDP averages the GPUs' gradients, i.e. the loss over groups. With groups = 1 the
    group is the whole batch.
    """
    n, c = q.shape
    assert k.shape == (n, c) and queue.shape[1] == c, (q.shape, k.shape, queue.shape)
    assert groups >= 1 and n % groups == 0, f"batch {n} does not split into {groups} groups"
    mu = (q + k.detach()) / 2  # NxC centre of the two views
    # One matmul against [sg(mu); sg(queue)] gives [L1 | L2]; scaling the NxC side by 1/T rather than the
    # Nx(N+K) logits, and concatenating the small key side rather than the logits, keeps the queue cheap.
    keys = torch.cat([mu.detach(), queue.detach()], dim=0)  # (N+K)xC
    logits = (mu / temperature) @ keys.T  # Nx(N+K); diagonal of the first NxN block = intra-image agreement
    group = torch.arange(n, device=q.device) // (n // groups)  # N: group of each row
    # centres of another group are not compared (none when groups = 1); in place: the matmul's backward does not
    # read its output
    logits[:, :n].masked_fill_(group[:, None] != group[None, :], float("-inf"))
    target = torch.arange(n, device=q.device)
    return F.cross_entropy(logits, target)


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float,
              groups: int = 1) -> torch.Tensor:
    """MoCo v2's InfoNCE (He et al. 2020, facebookresearch/moco moco/builder.py forward): each query against its
    own key and the queue.

    q: NxC normalised queries (with gradient); k: NxC normalised keys (no gradient); queue: KxC past keys (no
    gradient). The logits of row n are
        [q_n . sg(k_n)] ++ [q_n . sg(queue_j) for j in queue],
    divided by the temperature, and the target is column 0, the positive. No image of the batch is another's
    negative; only the queue is.

    `groups` is the CFE loss's (one loss per BatchNorm split or GPU): MoCo's per-GPU loss is the mean over that
    GPU's rows, and DDP averages the GPUs', so with equal groups the loss is the mean over the whole batch whatever
    their number; only that the batch splits into them is checked. The queue is copied before the matmul that
    keeps it for the backward pass (MoCo's `self.queue.clone().detach()`): the caller may overwrite its queue in
    place between the forward and the backward pass, as CFE.forward's enqueue does.
    """
    n, c = q.shape
    assert k.shape == (n, c) and queue.shape[1] == c, (q.shape, k.shape, queue.shape)
    assert groups >= 1 and n % groups == 0, f"batch {n} does not split into {groups} groups"
    positive = (q * k.detach()).sum(1, keepdim=True)  # Nx1: q_n . k_n
    negatives = q @ queue.detach().clone().T  # NxK
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=q.device))
