"""Glyphs: a small Omniglot-like data set drawn by this code, so that the quickstart needs no download and still
has disjoint train, val and test classes (scikit-learn's ten digits cannot give 5-way val and test tasks).

A class is a made-up character: two to four pen strokes, each a cubic Bezier curve through random control points.
An image of it is one "hand" drawing the character: every control point moves a little, the whole glyph is
rotated, scaled and shifted, and the pen width varies. Images are 28 x 28 grey, white strokes on black, as the
Omniglot caches. Every class draws from its own seeded generator, so the data is the same on every machine that
runs the same numpy and Pillow (both recorded in prepare.json).
"""

import numpy as np
from PIL import Image, ImageDraw

SIDE = 28
SCALE = 4  # drawn at 4x and downsampled with a box filter, which anti-aliases the strokes
SPLIT_CLASSES = {"train": 150, "val": 50, "test": 50}
IMAGES_PER_CLASS = 20


def character(rng) -> np.ndarray:
    """One class: strokes x 4 control points x (x, y) in the unit square."""
    strokes = rng.integers(2, 5)
    return rng.uniform(0.15, 0.85, size=(strokes, 4, 2))


def bezier(ctrl: np.ndarray, points: int = 24) -> np.ndarray:
    """Points along cubic Bezier curves. ctrl: S x 4 x 2 -> S x points x 2."""
    t = np.linspace(0.0, 1.0, points)[None, :, None]
    p0, p1, p2, p3 = (ctrl[:, i, None, :] for i in range(4))
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3


def draw(ctrl: np.ndarray, rng) -> np.ndarray:
    """One handwritten instance of a character: (28, 28) uint8."""
    ctrl = ctrl + rng.normal(0.0, 0.035, size=ctrl.shape)  # the hand's variation, point by point
    angle = np.deg2rad(rng.uniform(-15, 15))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * rng.uniform(0.8, 1.1)
    pts = (bezier(ctrl) - 0.5) @ rot.T + 0.5 + rng.uniform(-0.08, 0.08, size=2)
    big = SIDE * SCALE
    img = Image.new("L", (big, big), 0)
    pen = ImageDraw.Draw(img)
    width = int(round(rng.uniform(1.4, 2.6) * SCALE))
    for stroke in pts * big:
        pen.line([tuple(p) for p in stroke], fill=255, width=width, joint="curve")
    return np.asarray(img.resize((SIDE, SIDE), Image.BOX), dtype=np.uint8)


def make_split(first_class: int, classes: int, seed: int) -> tuple:
    """Classes first_class .. first_class + classes - 1: X (N, 28, 28, 1) uint8, Y (N,) int64 class ids."""
    X, Y = [], []
    for c in range(first_class, first_class + classes):
        rng = np.random.default_rng([seed, c])  # the class's own stream: a split does not depend on the others
        ctrl = character(rng)
        X += [draw(ctrl, rng) for _ in range(IMAGES_PER_CLASS)]
        Y += [c] * IMAGES_PER_CLASS
    return np.stack(X)[..., None], np.asarray(Y, dtype=np.int64)


def make_splits(seed: int = 0) -> dict:
    """{split: (X, Y)} with disjoint classes: train 0-149, val 150-199, test 200-249."""
    splits, first = {}, 0
    for name, n in SPLIT_CLASSES.items():
        splits[name] = make_split(first, n, seed)
        first += n
    return splits
