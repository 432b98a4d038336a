"""fewshot.glyphs: the quickstart's made-up characters are reproducible, in disjoint class splits, and each class's
drawings resemble each other more than other classes'."""

import numpy as np

from fewshot import glyphs


def test_a_split_is_the_same_every_time_and_does_not_depend_on_the_others():
    X, Y = glyphs.make_split(10, 3, seed=0)
    assert X.shape == (3 * glyphs.IMAGES_PER_CLASS, 28, 28, 1) and X.dtype == np.uint8
    assert Y.tolist() == [10] * 20 + [11] * 20 + [12] * 20
    again, _ = glyphs.make_split(11, 2, seed=0)  # classes 11 and 12 alone: the same drawings
    assert np.array_equal(again, X[20:])
    assert not np.array_equal(glyphs.make_split(10, 3, seed=1)[0], X)


def test_splits_have_disjoint_classes():
    splits = glyphs.make_splits(seed=0)
    assert {s: len(np.unique(Y)) for s, (X, Y) in splits.items()} == {"train": 150, "val": 50, "test": 50}
    assert splits["train"][1].max() < splits["val"][1].min() and splits["val"][1].max() < splits["test"][1].min()


def test_drawings_of_a_class_are_nearer_its_mean_than_other_classes():
    X, Y = glyphs.make_split(0, 10, seed=0)
    x = X.reshape(len(X), -1).astype(np.float64)
    means = np.stack([x[Y == c].mean(0) for c in range(10)])
    nearest = ((x[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == Y).mean() > 0.8  # chance: 0.1
    assert 0.02 < (X > 128).mean() < 0.3  # strokes, not blank or filled images
