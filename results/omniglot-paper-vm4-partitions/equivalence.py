"""The cfe.encode --partitions option against the pilot parts.py: on the paper preset's seed-0 checkpoint with
--knn-smooth 5, the option's train cache (images, pseudo-labels, partitions, centres) is the pilot's bank, its
sampler draws the same tasks and PEM examines the same clusters, so maml.train on it is the pilot's run
(maml-pem-p10-knn5). Run from the repository root after

    python -m cfe.encode --checkpoint runs/omniglot-paper-vm4/cfe/checkpoints/epoch_0200.pt --data-dir data/omniglot \\
        --dataset omniglot --out runs/exp/vm4-p10knn5/caches --knn-smooth 5 --partitions 10

The pilot's bank and sampler are repeated here line for line (parts.py runs maml.train when imported).
It printed (2026-12-05): Z equal True / X True y True part True centres True / tasks equal True True /
pem order equal True
"""
import numpy as np

from cfe.encode import kmeans, repeat_small_clusters
from fewshot.data import load_array, load_cluster_partition, load_images, load_pseudo_labels
from fewshot.episodes import EpisodeSampler
from maml.pem import ClusterIndex

P = 10
Z = np.load("runs/exp/vm4-knn5/caches/omniglot_64_K_500_train_emb.npz")["Z"]
Zp = np.load("runs/exp/vm4-p10knn5/caches/omniglot_64_K_500_train_emb.npz")["Z"]
print("Z equal", np.array_equal(Z, Zp))
X0 = load_images("data/omniglot/omniglot_cache_train.npz")
rows_all, labels_all, centres_all, part_of, off = [], [], [], [], 0
for p in range(P):
    centres, assign = kmeans(Z, 500, 100, seed=p)
    used, lab = np.unique(assign, return_inverse=True)
    rows = repeat_small_clusters(lab, 20)
    rows_all.append(rows)
    labels_all.append(lab[rows] + off)
    centres_all.append(centres[used])
    part_of += [p] * len(used)
    off += len(used)
bank_X, bank_y = X0[np.concatenate(rows_all)], np.concatenate(labels_all)
part_of, centres = np.array(part_of), np.concatenate(centres_all)
C = "runs/exp/vm4-p10knn5/caches/omniglot_64_K_500"
X, y, _ = load_pseudo_labels(C + "_train.npz")
cp = load_cluster_partition(C + "_train.npz", y)
cc = load_array(C + "_train_clusters.npz", "cluster_centers")
print("X", np.array_equal(X, bank_X), "y", np.array_equal(y, bank_y), "part", np.array_equal(cp, part_of),
      "centres", np.array_equal(cc, centres))
class PartitionSampler:
    def __init__(self, labels, *a):
        self.base = EpisodeSampler(labels, *a)
        self.by_part = [self.base.classes[part_of[self.base.classes] == p] for p in range(P)]

    def sample(self, rng):
        self.base.classes = self.by_part[rng.integers(P)]
        return self.base.sample(rng)
a, b = PartitionSampler(bank_y, 5, 1, 5), EpisodeSampler(y, 5, 1, 5, groups=cp)
ra, rb = np.random.default_rng(0), np.random.default_rng(0)
same = all(np.array_equal(a.sample(ra).query, b.sample(rb).query) for _ in range(2000))
print("tasks equal", same, ra.integers(1 << 30) == rb.integers(1 << 30))
i1 = ClusterIndex(bank_y, centres, 5)
i1.order = [o[part_of[o] == part_of[c]] for c, o in enumerate(i1.order)]
i2 = ClusterIndex(y, cc, 5, cp)
print("pem order equal", all(np.array_equal(u, v) for u, v in zip(i1.order, i2.order)))
