"""Few-shot accuracy with its 95% confidence interval, and pseudo-label quality (ARI, NMI, purity)."""

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

# how mean_ci95's half-width is computed, recorded beside every result that reports it
CI95_METHOD = "normal approximation, 1.96 * sd (ddof=1) / sqrt(n); null for fewer than 2 tasks"


def mean_ci95(values) -> tuple[float | None, float | None]:
    """Mean and half-width of the normal-approximation 95% interval, 1.96 * std / sqrt(n) (as in the literature).

    What is undefined (the interval of one value, the mean of none) is None, which JSON writes as null: NaN
    would make the results file invalid strict JSON."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean()) if len(v) else None
    if len(v) < 2:
        return mean, None
    return mean, float(1.96 * v.std(ddof=1) / np.sqrt(len(v)))


def paired_difference(a, b) -> tuple[float | None, float | None]:
    """Mean and 95% half-width of a - b over the same tasks (per-task accuracies in the same order): the
    comparison of two settings, tighter than comparing their two intervals."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired accuracies need the same tasks, got {a.shape} and {b.shape}")
    return mean_ci95(a - b)


def format_accuracy(mean, ci, signed=False) -> str:
    """'12.34 ± 0.56 %' from fractions (or '+1.23 ± 0.45 points' with signed=True, for a difference)."""
    if mean is None:
        return "-"
    value = f"{100 * mean:+.2f}" if signed else f"{100 * mean:.2f}"
    unit = "points" if signed else "%"
    return f"{value} ± {100 * ci:.2f} {unit}" if ci is not None else f"{value} {unit} (no interval)"


def purity(true, pred) -> float:
    """Fraction of points whose cluster's majority true class is their own."""
    table = contingency_matrix(true, pred, sparse=True)  # classes x clusters
    return float(table.max(axis=0).sum() / table.sum())


def clustering_accuracy(true, pred) -> float:
    """ACC of the unsupervised-clustering literature: the share of points whose cluster the best one-to-one
    matching of clusters to classes (Hungarian algorithm) maps to their class; clusters beyond the number of
    classes match nothing, so ACC is the number those papers report at K = the number of classes."""
    table = contingency_matrix(true, pred)  # classes x clusters
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def cluster_quality(true, pred) -> dict:
    return {"ari": float(adjusted_rand_score(true, pred)), "nmi": float(normalized_mutual_info_score(true, pred)),
            "acc": clustering_accuracy(true, pred), "purity": purity(true, pred), "clusters": int(len(np.unique(pred)))}
