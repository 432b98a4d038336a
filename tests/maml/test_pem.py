"""PEM (maml.pem) on a hand-made example: which cluster is chosen, which members may become queries, and that
the support set is left alone; the PEM transform: its warm-up, its rate, and its evaluation model."""

import numpy as np
import pytest
import torch

from fewshot.episodes import EpisodeSampler, Task
from maml.maml import MAMLNet
from maml.pem import PEM, ClusterIndex, entropy, pem_queries

# Clusters on a line (centre x, 0). Predicted labels per member (argmax of the fake evaluation model) and, for
# the chosen cluster of way 0, the logit of way 0 that ranks its members.
#   way 0 = cluster 0 at x=0: neighbours by distance 1 (x=1, all predicted 0: entropy 0), 2 (x=2.5, half 0 half 1:
#           ln 2), 3 (x=-3, uniform: ln 3 but third nearest). Its own cluster is uniform too (never a candidate).
#   way 1 = cluster 4 at x=20: 5 (x=21, 4 members, ln 2) then 6 (x=22.5, entropy 0).
#   way 2 = cluster 7 at x=40: 8 (x=41) and 9 (x=42.5) tie in entropy: the nearer one, 8, wins.
X_POS = [0, 1, 2.5, -3, 20, 21, 22.5, 40, 41, 42.5]
PREDICTED = {
    0: [0, 1, 2, 0, 1, 2],
    1: [0, 0, 0, 0, 0],
    2: [0, 1] * 6,
    3: [0, 1, 2] * 4,
    4: [1, 1, 1, 1, 1],
    5: [0, 1, 0, 1],
    6: [1, 1, 1, 1, 1],
    7: [2, 2, 2, 2, 2],
    8: [2, 0, 2, 0],
    9: [1, 2, 1, 2],
}
WAY0_SCORE = [5, 11, 0, 7, 3, 9, 1, 10, 2, 8, 4, 6]  # cluster 2's members' logit for way 0 (all distinct)
N_WAY, Q = 3, 4


@pytest.fixture
def example():
    labels = np.concatenate([np.full(len(PREDICTED[c]), c) for c in range(len(X_POS))])
    rng = np.random.default_rng(5)
    perm = rng.permutation(len(labels))  # members are not contiguous rows
    labels = labels[perm]
    logits = np.full((len(labels), N_WAY), -100.0)
    for c, preds in PREDICTED.items():
        rows = np.flatnonzero(labels == c)
        score = WAY0_SCORE if c == 2 else rng.permutation(len(rows))
        for r, p, v in zip(rows, preds, score):
            logits[r, 0] = v
            logits[r, p] = max(logits[r, p], v + 0.5)  # argmax is the chosen label p; column 0 ranks by v
    centres = np.array([[x, 0.0] for x in X_POS], dtype=np.float32)
    ways = np.array([0, 4, 7])
    support = np.array([np.flatnonzero(labels == c)[0] for c in ways])
    query = np.concatenate([np.flatnonzero(labels == c)[1:1 + Q] for c in ways])
    task = Task(support=support, support_y=np.arange(N_WAY), query=query,
                query_y=np.repeat(np.arange(N_WAY), Q), classes=ways)
    calls = []

    def predict(rows):
        calls.append(np.asarray(rows).copy())
        return logits[rows]

    return dict(labels=labels, logits=logits, centres=centres, task=task, predict=predict, calls=calls)


def members(labels, c):
    return set(np.flatnonzero(labels == c).tolist())


def test_cluster_index_neighbours_exclude_self_and_are_sorted_by_distance():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 8)).astype(np.float32)
    labels = rng.integers(0, 30, size=500)
    index = ClusterIndex(labels, centres, candidates=6)
    assert index.neighbours.shape == (30, 6)
    for c in range(30):
        d = ((centres.astype(np.float64) - centres[c]) ** 2).sum(1)
        nb = index.neighbours[c]
        assert c not in nb
        assert np.all(np.diff(d[nb]) >= 0)  # nearest first
        assert np.array_equal(nb, np.argsort(np.where(np.arange(30) == c, np.inf, d))[:6])
        assert np.array_equal(index.members[c], np.flatnonzero(labels == c))
    with pytest.raises(ValueError, match="fewer candidates than clusters"):
        ClusterIndex(labels, centres, candidates=30)


def test_cluster_index_with_partitions_orders_each_clusters_own_partition_only():
    """30 clusters in partitions of 10 (0-9, 10-19, 20-29): a cluster's neighbours, nearest first, are the 9 others
    of its partition, in the order they have among all 29."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(30, 8)).astype(np.float32)
    labels, part = rng.integers(0, 30, size=500), np.repeat([0, 1, 2], 10)
    index = ClusterIndex(labels, centres, candidates=4, partition=part)
    whole = ClusterIndex(labels, centres, candidates=4)
    for c in range(30):
        assert np.array_equal(index.order[c], [o for o in whole.order[c] if part[o] == part[c]])
        assert len(index.order[c]) == 9 and np.array_equal(index.neighbours[c], index.order[c][:4])
        assert set(index.candidates(c, [c, (c + 1) % 30])) <= set(range(10 * part[c], 10 * part[c] + 10))
    with pytest.raises(ValueError, match="fewer candidates than clusters in a partition \\(10 >= 10\\)"):
        ClusterIndex(labels, centres, candidates=10, partition=part)


def test_cluster_index_on_the_example(example):
    index = ClusterIndex(example["labels"], example["centres"], candidates=2)
    assert index.neighbours[0].tolist() == [1, 2]
    assert index.neighbours[4].tolist() == [5, 6]
    assert index.neighbours[7].tolist() == [8, 9]
    assert ClusterIndex(example["labels"], example["centres"], candidates=3).neighbours[0].tolist() == [1, 2, 3]


def test_entropy():
    assert entropy(np.array([5.0, 0, 0])) == 0.0
    assert entropy(np.array([3.0, 3, 0])) == pytest.approx(np.log(2))
    assert entropy(np.array([2.0, 2, 2])) == pytest.approx(np.log(3))


def test_pem_queries_choice_ranking_and_relabelling(example):
    labels, task = example["labels"], example["task"]
    index = ClusterIndex(labels, example["centres"], candidates=2)
    b_rows = np.flatnonzero(labels == 2)
    ranked = b_rows[np.argsort(-np.array(WAY0_SCORE))]
    top = set(ranked[:9].tolist())  # max(ceil(0.75 * 12), 4) = 9 highest logits for way 0
    seen0 = set()
    for seed in range(200):
        new = pem_queries(task, example["predict"], index, Q, np.random.default_rng(seed))
        # support set, its labels and the ways unchanged
        assert np.array_equal(new.support, task.support) and np.array_equal(new.support_y, task.support_y)
        assert np.array_equal(new.classes, task.classes)
        assert np.array_equal(new.query_y, np.repeat(np.arange(N_WAY), Q))
        assert len(new.query) == N_WAY * Q
        q = new.query.reshape(N_WAY, Q)
        # way 0: cluster 2 (the nearest, cluster 1, is certain; cluster 3 is more uncertain but not among 2 candidates),
        # only its 9 members that score highest for way 0, drawn without repetition
        assert set(q[0].tolist()) <= top and len(set(q[0].tolist())) == Q
        seen0 |= set(q[0].tolist())
        # way 1: cluster 5 has 4 members; max(ceil(0.75 * 4), Q) = 4 keeps all of them
        assert set(q[1].tolist()) == members(labels, 5)
        # way 2: entropy tie between 8 and 9 goes to the nearer, 8
        assert set(q[2].tolist()) == members(labels, 8)
        for way, c in enumerate(task.classes):  # never the way's own cluster
            assert not set(q[way].tolist()) & members(labels, c)
    assert seen0 == top  # every kept member can be drawn, the 3 lowest never
    # the task passed in was not modified
    assert np.array_equal(task.query, np.concatenate([np.flatnonzero(labels == c)[1:1 + Q] for c in [0, 4, 7]]))


def test_pem_queries_with_more_neighbours_picks_the_most_uncertain(example):
    labels = example["labels"]
    index = ClusterIndex(labels, example["centres"], candidates=3)
    new = pem_queries(example["task"], example["predict"], index, Q, np.random.default_rng(0))
    assert set(new.query[:Q].tolist()) <= members(labels, 3)  # ln 3 beats ln 2 once cluster 3 is a candidate
    # each neighbouring cluster is predicted once, never the ways' own clusters
    predicted = [frozenset(r.tolist()) for r in example["calls"]]
    assert len(predicted) == len(set(predicted))
    assert all(not members(labels, c) & set(p) for p in predicted for c in example["task"].classes)


def test_pem_queries_keep_fraction(example):
    """keep_frac=0.25 keeps max(ceil(3), 4) = 4 of cluster 2's 12 members: the 4 best for way 0."""
    labels = example["labels"]
    index = ClusterIndex(labels, example["centres"], candidates=2)
    b_rows = np.flatnonzero(labels == 2)
    best4 = set(b_rows[np.argsort(-np.array(WAY0_SCORE))][:4].tolist())
    for seed in range(20):
        new = pem_queries(example["task"], example["predict"], index, Q, np.random.default_rng(seed), keep_frac=0.25)
        assert set(new.query[:Q].tolist()) == best4


def test_pem_never_draws_queries_from_another_way_of_the_task(example):
    """Make way 1's own cluster (4) the most uncertain neighbour of way 0: it must still not be chosen, since its
    members would come back labelled as way 0 (the next candidates take its place)."""
    labels = example["labels"]
    centres = example["centres"].copy()
    centres[4] = [0.5, 0.0]  # way 1's cluster is now way 0's nearest neighbour
    index = ClusterIndex(labels, centres, candidates=2)
    assert 4 in index.neighbours[0]
    assert 4 not in index.candidates(0, example["task"].classes)
    for seed in range(20):
        new = pem_queries(example["task"], example["predict"], index, Q, np.random.default_rng(seed))
        for way in range(N_WAY):
            for c in example["task"].classes:
                assert not set(new.query[way * Q:(way + 1) * Q].tolist()) & members(labels, c)


def test_candidates_are_the_nearest_of_the_clusters_that_are_no_way_of_the_task(example):
    """What the module docstring says (a deliberate deviation from upstream's ind_sorted[c][1:k+1], the k
    nearest with only c excluded): all the task's ways are set aside first, and as many candidates remain."""
    import maml.pem

    index = ClusterIndex(example["labels"], example["centres"], candidates=2)
    assert index.candidates(0, [0, 4, 7]).tolist() == [1, 2]
    assert index.candidates(0, [0, 1, 7]).tolist() == [2, 3]  # upstream would examine [1, 2], cluster 1 a way
    doc = " ".join(maml.pem.__doc__.split())
    assert "none of the task's ways" in doc and "ind_sorted[c][1:k+1]" in doc and "NOTE" in doc


def toy_pem(eta, warmup=1):
    """A PEM of a tiny network over 8 clusters of 6 random 16x16 images, and 2 tasks of its clusters."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 6)
    X = torch.from_numpy(rng.integers(0, 256, size=(len(labels), 16, 16, 1), dtype=np.uint8))
    torch.manual_seed(0)
    model = MAMLNet(1, 2, 16, 3)
    index = ClusterIndex(labels, rng.normal(size=(8, 4)), candidates=2)
    sampler = EpisodeSampler(labels, 3, 1, 2)
    tasks = [sampler.sample(rng) for _ in range(2)]
    return PEM(model, index, eta=eta, warmup=warmup, keep=0.75, inner_steps=1, inner_lr=0.1), model, X, tasks


def test_pem_waits_for_its_warm_up_and_then_rebuilds_with_probability_one_minus_eta():
    pem, _, X, tasks = toy_pem(eta=0.0, warmup=2)
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    for epoch in (0, 1):  # warm-up: the tasks as they were, and no draw from rng (runs stay comparable)
        same, rebuilt = pem(tasks, X, epoch, rng)
        assert same is tasks and rebuilt is False and rng.bit_generator.state == state
    new, rebuilt = pem(tasks, X, 2, rng)
    assert rebuilt is True and len(new) == 2
    for t, n in zip(tasks, new):  # the support set stays; the queries, as many per way, come from other clusters
        assert np.array_equal(t.support, n.support) and np.array_equal(t.classes, n.classes)
        assert len(n.query) == len(t.query) and not set(n.query // 6) & set(t.classes)
    never, _, _, _ = toy_pem(eta=1.0)
    assert all(never(tasks, X, epoch, np.random.default_rng(epoch))[1] is False for epoch in range(1, 20))
    half, _, _, _ = toy_pem(eta=0.5)
    rng = np.random.default_rng(2)
    share = np.mean([half(tasks, X, 1, rng)[1] for _ in range(200)])
    assert 0.4 < share < 0.6


def test_pem_judges_with_a_copy_of_the_model_refreshed_on_request():
    pem, model, X, tasks = toy_pem(eta=0.0)
    before = {k: v.clone() for k, v in pem.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # training moves the live model ...
    assert all(torch.equal(before[k], v) for k, v in pem.state_dict().items())  # ... not the evaluation model
    rebuilt = pem(tasks, X, 1, np.random.default_rng(3))[0]
    pem.refresh(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in pem.state_dict().items())
    again = pem(tasks, X, 1, np.random.default_rng(3))[0]  # other weights, other choices (same draws)
    assert any(not np.array_equal(a.query, b.query) for a, b in zip(rebuilt, again))
