"""The progressive evaluation mechanism (PEM, DESIGN.md §4).

After a warm-up, a meta-batch is sometimes rebuilt: for each way c of a task, the candidates are the k clusters
nearest c's centre among those that are none of the task's ways (c and the others alike; upstream takes
`ind_sorted[c][1:k+1]`, excluding only c: see the NOTE in `pem_queries`). Among them the evaluation model
(adapted on the task's support set) picks the cluster it is most unsure about (highest entropy of its
predicted-label histogram); the way's queries are redrawn from that cluster's members that score highest for the
way's label. The support set and its labels stay as they were. Every cluster needs members: maml.train refuses
centres without any.
"""

import math

import numpy as np

from fewshot.episodes import Task


class ClusterIndex:
    """Members of each pseudo-class and, for each cluster, the other clusters ordered by centre distance.

    With `partition` (K,), the partition of each cluster (cfe.encode --partitions), a cluster's neighbours are
    those of its own partition only: the others hold the same images under other labels."""

    def __init__(self, cluster_label: np.ndarray, centres: np.ndarray, k: int, partition=None):
        n_clusters = len(centres)
        partition = np.zeros(n_clusters, np.int64) if partition is None else np.asarray(partition)
        assert partition.shape == (n_clusters,), (partition.shape, n_clusters)
        smallest = np.unique(partition, return_counts=True)[1].min()  # clusters in the smallest partition
        if k >= smallest:
            raise ValueError(f"PEM needs k < number of clusters in a partition ({k} >= {smallest})")
        self.members = [np.flatnonzero(cluster_label == c) for c in range(n_clusters)]
        c = centres.astype(np.float64)
        d = (c * c).sum(1)[:, None] + (c * c).sum(1)[None] - 2 * c @ c.T  # KxK squared distances
        np.fill_diagonal(d, np.inf)  # a cluster is not its own neighbour
        self.k = k
        order = np.argsort(d, axis=1, kind="stable")[:, :-1]  # Kx(K-1), nearest first, self excluded
        if len(np.unique(partition)) > 1:  # one array per cluster, of its partition's size - 1
            order = [o[partition[o] == partition[i]] for i, o in enumerate(order)]
        self.order = order
        self.neighbours = np.stack([o[:k] for o in order])  # Kxk

    def candidates(self, c: int, exclude) -> np.ndarray:
        """The k nearest clusters to c that are not in `exclude` (the task's other ways)."""
        keep = self.order[c][~np.isin(self.order[c], exclude)]
        return keep[: self.k]


def entropy(hist: np.ndarray) -> float:
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log(p)).sum())


def pem_queries(task: Task, predict, index: ClusterIndex, n_query: int, rng: np.random.Generator,
                keep_frac: float = 0.75) -> Task:
    """Rebuild the queries of `task`.

    predict(rows) -> (len(rows), N) logits of the evaluation model adapted on task's support set.
    Ties in entropy go to the nearer cluster.
    """
    n_way = len(task.classes)
    cache = {}  # neighbouring clusters of different ways overlap; predict each once
    new_query = []
    for way, c in enumerate(task.classes):
        best, best_h = None, -1.0
        # NOTE: upstream (`ind_sorted[c][1:k+1]`) excludes only c itself; we also skip the task's other ways, whose
        # members would come back as queries labelled with the wrong way (and could repeat that way's support
        # images), and take the k nearest of the clusters left, so a way still examines k candidates.
        for nb in index.candidates(c, task.classes):
            if nb not in cache:
                cache[nb] = np.asarray(predict(index.members[nb]))
            logits = cache[nb]
            h = entropy(np.bincount(logits.argmax(1), minlength=n_way).astype(np.float64))
            if h > best_h:
                best, best_h = nb, h
        rows, logits = index.members[best], cache[best]
        order = np.argsort(-logits[:, way], kind="stable")  # most like this way first
        keep = max(math.ceil(keep_frac * len(rows)), n_query)
        pool = rows[order[:keep]]
        new_query.append(rng.choice(pool, size=n_query, replace=len(pool) < n_query))
    return Task(support=task.support, support_y=task.support_y, query=np.concatenate(new_query),
                query_y=np.repeat(np.arange(n_way), n_query), classes=task.classes)
