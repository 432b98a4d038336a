"""Embedding Propagation on the pseudo-labels (docs/design.md, "EP").

    ep.train  pre-train (rotations, classifier on propagated embeddings), then fine-tune on episodes
    ep.test   label propagation on a run's test or val tasks, optionally with unlabelled images
"""
