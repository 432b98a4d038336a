"""Pilot: MAML + PEM where each task comes from one of P k-means partitions (seeds 0..P-1) of the same embedding,
as CACTUs (Hsu et al. 2019) draws tasks from many partitions. It runs maml.train with its loaders patched: the
train images of all partitions form one bank, each task's ways come from one partition drawn uniformly, and PEM
examines the clusters of the way's own partition. The run's config.json does not record P; run.sh does.

    python parts.py P TRAIN_EMB.npz PREPARED_TRAIN.npz -- <maml.train arguments>
"""
import sys

import numpy as np

from cfe.encode import kmeans, repeat_small_clusters
from fewshot.data import load_images
from fewshot.episodes import EpisodeSampler
from maml import train as T
from maml.pem import ClusterIndex

P, emb, prepared = int(sys.argv[1]), sys.argv[2], sys.argv[3]
argv = sys.argv[sys.argv.index("--") + 1:]
Z = np.load(emb)["Z"]
X0 = load_images(prepared)
assert len(X0) == len(Z)
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
    print(f"partition {p}: {len(used)} clusters, {len(rows)} rows", flush=True)
bank_X, bank_y = X0[np.concatenate(rows_all)], np.concatenate(labels_all)
part_of, centres = np.array(part_of), np.concatenate(centres_all)

T.load_pseudo_labels = lambda path: (bank_X, bank_y, np.arange(len(bank_y)))
_Sampler = T.EpisodeSampler


class PartitionSampler:
    """One partition per task, drawn uniformly."""
    def __init__(self, labels, *a):
        self.base = _Sampler(labels, *a)
        self.by_part = [self.base.classes[part_of[self.base.classes] == p] for p in range(P)]

    def sample(self, rng):
        self.base.classes = self.by_part[rng.integers(P)]
        return self.base.sample(rng)


# (the `**kw` and `_partition` arguments follow maml.train since cfe.encode --partitions, which this pilot became;
# the real train cache has no `partition` array, so maml.train passes one partition, which these patches ignore)
T.EpisodeSampler = lambda labels, *a, **kw: (PartitionSampler(labels, *a) if labels is bank_y
                                             else _Sampler(labels, *a, **kw))


def pem_index(args, pseudo, _partition):
    index = ClusterIndex(pseudo, centres, args.pem_k)
    index.order = [o[part_of[o] == part_of[c]] for c, o in enumerate(index.order)]  # same partition only
    return index


T.pem_index = pem_index
assert EpisodeSampler is _Sampler
T.main(argv)
