"""Prototypical networks (Snell et al. 2017) on the pseudo-labels: the embedding + nearest-prototype learner of the
comparison table, trained on the same caches and tested on the same tasks as MAML and EP.

    protonet.train  episodic training: squared Euclidean distance to class-mean prototypes, Adam, best val epoch
    protonet.test   nearest prototype on a run's test or val tasks (unlabelled images, if asked for, are ignored)
"""
