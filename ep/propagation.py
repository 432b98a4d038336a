"""Embedding and label propagation (Rodriguez et al., ECCV 2020), batched over tasks.

Follows upstream's embedding_propagation/embedding_propagation.py (ServiceNow/embedding-propagation), which in turn
follows Zhou et al. 2004, "Learning with local and global consistency". For the n embeddings z of one task:

    d_ij = ||z_i - z_j||^2 / sqrt(c), divided by the standard deviation of the non-zero d_ij
    A_ij = exp(-d_ij), A_ii = 0                       (Gaussian affinities)
    S = D^-1/2 A D^-1/2, D = diag(row sums of A)      (symmetric normalisation)
    P = (I - alpha S)^-1                              (the propagator)

Embedding propagation replaces z by P z (alpha 0.5); label propagation gives the class scores P Y of every node
from the one-hot labels Y of the labelled nodes (zero rows for the unlabelled), with P's rows normalised to sum
to one (alpha 0.2). NOTE: P is never formed: `torch.linalg.solve(I - alpha S, B)` gives P B directly, which is
cheaper and better conditioned than upstream's torch.inverse, and the row sums of P are P 1 (P >= 0 elementwise,
a series of powers of alpha S), so the normalised scores come from one solve with [Y, 1] as its right-hand side.
"""

import math

import torch

EMBEDDING_ALPHA = 0.5
LABEL_ALPHA = 0.2


def affinities(z: torch.Tensor) -> torch.Tensor:
    """Gaussian affinities A with a zero diagonal. z: T x n x c embeddings of T tasks -> T x n x n."""
    assert z.dim() == 3 and z.shape[1] >= 3, f"expected T x n x c embeddings, n >= 3, got {tuple(z.shape)}"
    n, c = z.shape[1:]
    off = 1 - torch.eye(n, dtype=z.dtype, device=z.device)  # n x n, zero on the diagonal
    sq = z.pow(2).sum(-1)  # T x n
    # NOTE: the expanded form, not (z_i - z_j)^2 summed over a T x n x n x c tensor (too large at 84 px) nor
    # torch.cdist (whose gradient at a zero distance is not finite)
    d = (sq[:, :, None] + sq[:, None, :] - 2 * z @ z.transpose(1, 2)).clamp_min(0) * off / math.sqrt(c)
    # scaled by the std of the off-diagonal distances of each task (upstream: of the non-zero ones)
    pairs = n * n - n
    mean = d.sum((1, 2), keepdim=True) / pairs
    std = (((d - mean) * off).pow(2).sum((1, 2), keepdim=True) / (pairs - 1)).sqrt()
    return torch.exp(-d / std.clamp_min(1e-12)) * off


def propagate(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """P b = (I - alpha S)^-1 b for affinities a (T x n x n) and right-hand sides b (T x n x m) -> T x n x m."""
    assert a.shape[:2] == b.shape[:2] and a.shape[1] == a.shape[2], f"shapes {tuple(a.shape)} and {tuple(b.shape)}"
    inv_sqrt = (a.sum(-1) + 1e-4).rsqrt()  # T x n; upstream's 1e-4 keeps an isolated node finite
    s = a * inv_sqrt[:, :, None] * inv_sqrt[:, None, :]
    m = torch.eye(a.shape[1], dtype=a.dtype, device=a.device) - alpha * s
    if a.device.type == "cpu":
        # NOTE: one solve per task on a CPU: the batched LAPACK path of torch 2.14's MKL build fails ("Pivots given
        # to lu_solve ...") for two or more matrices of a few hundred rows on more than one thread, and the
        # batch is a loop over the matrices there anyway
        return torch.stack([torch.linalg.solve(mi, bi) for mi, bi in zip(m, b)])
    return torch.linalg.solve(m, b)


def embedding_propagation(z: torch.Tensor, alpha: float = EMBEDDING_ALPHA) -> torch.Tensor:
    """Propagated embeddings P z. z: T x n x c -> T x n x c."""
    return propagate(affinities(z), z, alpha)


def label_propagation(z: torch.Tensor, labels: torch.Tensor, ways: int, alpha: float = LABEL_ALPHA) -> torch.Tensor:
    """Class scores of every node: the rows of P normalised to sum to one, times the one-hot labels.

    z: T x n x c embeddings; labels: T x n, 0..ways-1 for a labelled node and -1 for an unlabelled one.
    Returns T x n x ways non-negative scores; a row sums to the propagated share of labelled mass it receives
    (at most one), so log(scores) are the logits of upstream's LabelPropagation(apply_log=True)."""
    assert labels.shape == z.shape[:2], f"labels {tuple(labels.shape)} for embeddings {tuple(z.shape)}"
    assert int(labels.max()) < ways, f"labels up to {int(labels.max())} for {ways} ways"
    y = torch.zeros(*labels.shape, ways + 1, dtype=z.dtype, device=z.device)  # the last column: all ones
    known = labels >= 0
    y[..., :ways][known] = torch.nn.functional.one_hot(labels[known], ways).to(z.dtype)
    y[..., ways] = 1
    py = propagate(affinities(z), y, alpha)  # T x n x (ways + 1)
    return py[..., :ways] / py[..., ways:]


def label_propagation_logits(z, labels, ways, alpha=LABEL_ALPHA, eps=1e-6) -> torch.Tensor:
    """log(scores + eps), upstream's logits for the cross-entropy of the queries."""
    return torch.log(label_propagation(z, labels, ways, alpha) + eps)
