"""The progressive evaluation mechanism (PEM; docs/design.md, "PEM"), as a transform of meta-batches.

After a warm-up, a meta-batch is sometimes rebuilt: for each way c of a task, the candidates are the clusters
nearest c's centre among those that are none of the task's ways (c and the others alike; upstream takes
`ind_sorted[c][1:k+1]`, excluding only c: see the NOTE in `pem_pools`). Among them the evaluation model
(adapted on the task's support set) picks the cluster it is most unsure about (highest entropy of its
predicted-label histogram); the way's queries are redrawn from that cluster's members that score highest for the
way's label. The support set and its labels stay as they were. Every cluster needs members: maml.train refuses
centres without any.

    pem = PEM(model, index, eta=0.9, warmup=5, keep=0.75, inner_steps=1, inner_lr=0.1)
    tasks, rebuilt = pem(tasks, X, epoch, rng)   # each meta-batch
    pem.refresh(model)                           # each epoch's end

A rebuild has two parts: each way's pool of candidate queries (`pem_pools`: the evaluation model's adaptation and
predictions, the costly part, free of randomness) and the queries drawn from the pools (`draw_queries`: cheap, from
the run's generator, task after task). Under torchrun each rank finds the pools of its own share of the meta-batch
and every rank draws the queries of all its tasks from the gathered pools (maml.scaleout), so the generator moves
as in one process and the next meta-batch is the same on every rank.
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
from maml.scaleout import gather_objects


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


def pem_pools(task: Task, predict, index: ClusterIndex, n_query: int, keep_frac: float = 0.75) -> list:
    """Each way's pool of new queries: the members of its chosen cluster that score highest for the way, at least
    n_query of them. No randomness: a task's pools are the same wherever they are computed.

    predict(rows) -> (len(rows), N) logits of the evaluation model adapted on task's support set.
    Ties in entropy go to the nearer cluster.
    """
    n_way = len(task.classes)
    cache = {}  # neighbouring clusters of different ways overlap; predict each once
    pools = []
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
        pools.append(rows[order[:keep]])
    return pools


def draw_queries(task: Task, pools: list, n_query: int, rng: np.random.Generator) -> Task:
    """The task with n_query queries of each way drawn from its pool (with replacement only from a pool smaller
    than n_query); the support set and its labels stay as they were."""
    new_query = [rng.choice(pool, size=n_query, replace=len(pool) < n_query) for pool in pools]
    return Task(support=task.support, support_y=task.support_y, query=np.concatenate(new_query),
                query_y=np.repeat(np.arange(len(task.classes)), n_query), classes=task.classes)


def pem_queries(task: Task, predict, index: ClusterIndex, n_query: int, rng: np.random.Generator,
                keep_frac: float = 0.75) -> Task:
    """Rebuild the queries of `task` (see pem_pools and draw_queries)."""
    return draw_queries(task, pem_pools(task, predict, index, n_query, keep_frac), n_query, rng)


class PEM:
    """PEM as a transform of meta-batches. It holds its own evaluation model: a copy of the meta-learned model,
    refreshed at the end of every epoch (upstream train_un_maml_pem.py does so), so within an epoch every
    rebuilt task is judged by the same weights while the live model moves after each meta-batch."""

    def __init__(self, model, index: ClusterIndex, eta: float, warmup: int, keep: float, inner_steps: int,
                 inner_lr: float):
        self.eval_model = copy.deepcopy(model)
        self.index, self.eta, self.warmup, self.keep = index, eta, warmup, keep
        self.inner_steps, self.inner_lr = inner_steps, inner_lr

    def __call__(self, tasks: list, X: torch.Tensor, epoch: int, rng: np.random.Generator,
                 share: slice = slice(None)) -> tuple[list, bool]:
        """(tasks, rebuilt): the meta-batch, rebuilt with probability 1 - eta from epoch `warmup` (0-based) on.
        X: the uint8 NHWC image bank the tasks index. Draws from rng only after the warm-up. `share`: the tasks
        whose pools this rank finds (under torchrun); every rank gets the whole rebuilt meta-batch."""
        if epoch < self.warmup or rng.random() >= 1 - self.eta:
            return tasks, False
        # NOTE: not a generator per task, which would let a rank rebuild its share alone: the draws would differ
        # from those of a run before scale-out, and how far a draw moves rng depends on the pool's size, thus on
        # the predictions. The costly part, the pools, is split over the ranks and gathered (one exchange of small
        # index arrays per rebuilt meta-batch); every rank then draws every task's queries, in order.
        pools = gather_objects([self.pools(t, X) for t in tasks[share]])  # every task's, in task order
        assert len(pools) == len(tasks), "the ranks' shares must cover the meta-batch"
        return [draw_queries(t, p, len(t.query) // len(t.classes), rng) for t, p in zip(tasks, pools)], True

    def pools(self, task: Task, X: torch.Tensor) -> list:
        """pem_pools of the task: its candidate clusters judged by the evaluation model adapted on its support
        set."""
        device = next(self.eval_model.parameters()).device
        xs, ys, _, _ = task_tensors(X, task, device)
        params = {n: p.detach().requires_grad_() for n, p in self.eval_model.named_parameters()}
        adapted = adapt(self.eval_model, params, xs, ys, self.inner_steps, self.inner_lr, create_graph=False)

        def predict(rows):  # the adapted evaluation model's logits, rows (R,) -> (R, ways)
            with torch.no_grad():
                x = to_float(X[torch.from_numpy(rows)].to(device))
                return functional_call(self.eval_model, adapted, (x,)).cpu()

        return pem_pools(task, predict, self.index, len(task.query) // len(task.classes), self.keep)

    def refresh(self, model) -> None:
        self.eval_model.load_state_dict(model.state_dict())

    def state_dict(self) -> dict:
        return self.eval_model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.eval_model.load_state_dict(state)
