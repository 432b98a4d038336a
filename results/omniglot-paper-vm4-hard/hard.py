"""Pilot: MAML + PEM where a share of the tasks are hard: their ways are a random cluster and its nearest clusters
(by centre distance) instead of random clusters. It runs maml.train with its sampler patched; the run's
config.json does not record the share; run.sh does.

    python hard.py SHARE -- <maml.train arguments>
"""
import sys

import numpy as np

from fewshot.data import load_array
from maml import train as T
from maml.pem import ClusterIndex

share = float(sys.argv[1])
argv = sys.argv[sys.argv.index("--") + 1:]
_Sampler = T.EpisodeSampler
first = []


class HardSampler:
    """With probability `share`, ways = a random cluster and its n-1 nearest clusters, in random order."""
    def __init__(self, labels, *a):
        self.base = _Sampler(labels, *a)
        train_cache = argv[argv.index("--train-cache") + 1]
        order = ClusterIndex(labels, load_array(T.clusters_path(train_cache), "cluster_centers"), 1).order
        self.nearest = np.c_[np.arange(len(order)), order]  # the cluster itself, then the others nearest first
        self.all = self.base.classes

    def sample(self, rng):
        if rng.random() < share:
            c = rng.choice(self.all)
            self.base.classes = rng.permutation(self.nearest[c][: self.base.n_way])
        else:
            self.base.classes = self.all
        return self.base.sample(rng)


def sampler(labels, *a):
    if not first:  # maml.train builds the train sampler first, then the val one
        first.append(1)
        return HardSampler(labels, *a)
    return _Sampler(labels, *a)


T.EpisodeSampler = sampler
T.main(argv)
