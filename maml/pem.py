"""The progressive evaluation mechanism (PEM; docs/design.md, "PEM"), as a transform of meta-batches.

After a warm-up, a meta-batch is sometimes rebuilt: for each way c of a task, the candidates are the clusters
nearest c's centre among those that are none of the task's ways (c and the others alike; upstream takes
`ind_sorted[c][1:k+1]`, excluding only c: see the NOTE in `pem_queries`). Among them the evaluation model
(adapted on the task's support set) picks the cluster it is most unsure about (highest entropy of its
predicted-label histogram); the way's queries are redrawn from that cluster's members that score highest for the
way's label. The support set and its labels stay as they were. Every cluster needs members: maml.train refuses
centres without any.

    pem = PEM(model, index, eta=0.9, warmup=5, keep=0.75, inner_steps=1, inner_lr=0.1)
    tasks, rebuilt = pem(tasks, X, epoch, rng)   # each meta-batch
    pem.refresh(model)                           # each epoch's end
"""

import copy
import math

import numpy as np
import torch
from torch.func import functional_call

from fewshot.backbones import to_float
from fewshot.episodes import Task
from fewshot.evaluation import task_tensors
from maml.maml import adapt


class ClusterIndex:
    """Members of each pseudo-class and, for each cluster, the other clusters ordered by centre distance.

    With `partition` (K,), the partition of each cluster (cfe.encode --partitions), a cluster's neighbours are
    those of its own partition only: the others hold the same images under other labels."""

    def __init__(self, cluster_label: np.ndarray, centres: np.ndarray, candidates: int, partition=None):
        n_clusters = len(centres)
        partition = np.zeros(n_clusters, np.int64) if partition is None else np.asarray(partition)
        assert partition.shape == (n_clusters,), (partition.shape, n_clusters)
        smallest = np.unique(partition, return_counts=True)[1].min()  # clusters in the smallest partition
        if candidates >= smallest:
            raise ValueError(f"PEM needs fewer candidates than clusters in a partition ({candidates} >= {smallest})")
        self.members = [np.flatnonzero(cluster_label == c) for c in range(n_clusters)]
        c = centres.astype(np.float64)
        d = (c * c).sum(1)[:, None] + (c * c).sum(1)[None] - 2 * c @ c.T  # KxK squared distances
        np.fill_diagonal(d, np.inf)  # a cluster is not its own neighbour
        self.n_candidates = candidates
        order = np.argsort(d, axis=1, kind="stable")[:, :-1]  # Kx(K-1), nearest first, self excluded
        if len(np.unique(partition)) > 1:  # one array per cluster, of its partition's size - 1
            order = [o[partition[o] == partition[i]] for i, o in enumerate(order)]
        self.order = order
        self.neighbours = np.stack([o[:candidates] for o in order])  # K x candidates

    def candidates(self, c: int, exclude) -> np.ndarray:
        """The nearest clusters to c (n_candidates of them) that are not in `exclude` (the task's ways)."""
        keep = self.order[c][~np.isin(self.order[c], exclude)]
        return keep[: self.n_candidates]


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
        # images), and take the nearest of the clusters left, so a way still examines as many candidates.
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


class PEM:
    """PEM as a transform of meta-batches. It holds its own evaluation model: a copy of the meta-learned model,
    refreshed at the end of every epoch (upstream train_un_maml_pem.py does so), so within an epoch every
    rebuilt task is judged by the same weights while the live model moves after each meta-batch."""

    def __init__(self, model, index: ClusterIndex, eta: float, warmup: int, keep: float, inner_steps: int,
                 inner_lr: float):
        self.eval_model = copy.deepcopy(model)
        self.index, self.eta, self.warmup, self.keep = index, eta, warmup, keep
        self.inner_steps, self.inner_lr = inner_steps, inner_lr

    def __call__(self, tasks: list, X: torch.Tensor, epoch: int, rng: np.random.Generator) -> tuple[list, bool]:
        """(tasks, rebuilt): the meta-batch, rebuilt with probability 1 - eta from epoch `warmup` (0-based) on.
        X: the uint8 NHWC image bank the tasks index. Draws from rng only after the warm-up."""
        if epoch < self.warmup or rng.random() >= 1 - self.eta:
            return tasks, False
        return [self.rebuild(t, X, rng) for t in tasks], True

    def rebuild(self, task: Task, X: torch.Tensor, rng: np.random.Generator) -> Task:
        """The task with queries redrawn by the evaluation model adapted on its support set."""
        device = next(self.eval_model.parameters()).device
        xs, ys, _, _ = task_tensors(X, task, device)
        params = {n: p.detach().requires_grad_() for n, p in self.eval_model.named_parameters()}
        adapted = adapt(self.eval_model, params, xs, ys, self.inner_steps, self.inner_lr, create_graph=False)

        def predict(rows):  # the adapted evaluation model's logits, rows (R,) -> (R, ways)
            with torch.no_grad():
                x = to_float(X[torch.from_numpy(rows)].to(device))
                return functional_call(self.eval_model, adapted, (x,)).cpu()

        n_query = len(task.query) // len(task.classes)
        return pem_queries(task, predict, self.index, n_query, rng, self.keep)

    def refresh(self, model) -> None:
        self.eval_model.load_state_dict(model.state_dict())

    def state_dict(self) -> dict:
        return self.eval_model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.eval_model.load_state_dict(state)
