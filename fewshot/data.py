"""The cache format (docs/design.md, "Data and the cache contract"): one `.npz` per split with uint8 NHWC images.

    {name}_cache_{split}.npz          prepared data: X (N,H,W,C) uint8, Y (N,) int64 true labels
    {dataset}_{dim}_K_{K}_{split}.npz  written by cfe.encode: X, Y, cluster_label (+ index, meta; + partition
                                       when train holds several k-means partitions: cfe.encode --partitions)
    {dataset}_{dim}_K_{K}_train_clusters.npz   cluster_centers (K,dim)
    {dataset}_{dim}_K_{K}_train_emb.npz        Z (N,dim)

Unsupervised stages read train images through `load_images`, which never touches `Y`. Files written by the
upstream PL-CFE code (no `index` or `meta`) load too, including its encoded caches, whose `X` is torchvision's
`ToTensor` output (float NCHW in [0, 1], upstream cfe/cfe_encoding.py): read back as the uint8 NHWC pixels.
"""

import json
import tokenize
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fewshot.errors import UserError, require_file
from fewshot.io import mmap_npz_array, save_npz

SPLITS = ("train", "val", "test")


def prepared_path(root, name, split) -> Path:
    return Path(root) / f"{name}_cache_{split}.npz"


def encoded_path(root, dataset, dim, k, split) -> Path:
    return Path(root) / f"{dataset}_{dim}_K_{k}_{split}.npz"


def _open(path):
    path = require_file(path)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":  # a single .npy array: no named arrays to read
        raise UserError(f"{path}: a single array (.npy), expected an .npz archive of named arrays")
    if not magic.startswith(b"PK"):  # else numpy guesses a pickle and its message talks about allow_pickle
        raise UserError(f"{path}: not a readable .npz file (it is not a zip archive)")
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable .npz file ({e})") from None
    assert isinstance(npz, np.lib.npyio.NpzFile), path  # the magic bytes said zip
    return npz


def _get(npz, path, key):
    if key not in npz.files:
        raise UserError(f"{path}: missing array '{key}' (has {', '.join(npz.files) or 'nothing'})")
    try:
        return npz[key]
    # numpy parses an .npy header as a Python literal: damaged header bytes fail in the tokenizer or parser
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, tokenize.TokenError, SyntaxError) as e:
        raise UserError(f"{path}: array '{key}' is corrupt ({type(e).__name__}: {e})") from None


def _from_upstream_floats(X, path) -> np.ndarray:
    """Upstream's encoded caches store `ToTensor()` images, float (N,C,H,W) in [0, 1]; x * 255 rounds back to the
    uint8 pixels they came from exactly. Other arrays are returned as they are, for check_images to judge."""
    if not (np.issubdtype(X.dtype, np.floating) and X.ndim == 4 and X.shape[1] in (1, 3) and X.shape[-1] > 3):
        return X
    out = np.empty((X.shape[0], X.shape[2], X.shape[3], X.shape[1]), dtype=np.uint8)
    for i in range(0, len(X), 4096):  # in chunks: a float copy of a whole ImageNet-size split would not fit
        chunk = X[i:i + 4096]
        if not (np.isfinite(chunk).all() and chunk.min() >= 0 and chunk.max() <= 1):
            raise UserError(f"{path}: X holds float images outside [0, 1]; expected uint8 pixels (N,H,W,C)")
        out[i:i + 4096] = np.rint(chunk * 255).transpose(0, 2, 3, 1)
    return out


# Images of a larger file are memory-mapped rather than read (tieredImageNet's train split is 9.5 GB); a mapped
# array skips the zip's CRC check, which would read it all.
MMAP_BYTES = 2**30


def _read_images(npz, path) -> np.ndarray:
    X = None
    if Path(path).stat().st_size > MMAP_BYTES and "X" in npz.files:
        try:
            X = mmap_npz_array(path, "X")  # None where the file cannot be mapped: then read as usual
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, tokenize.TokenError, SyntaxError) as e:
            raise UserError(f"{path}: array 'X' is corrupt ({type(e).__name__}: {e})") from None
    return check_images(_from_upstream_floats(_get(npz, path, "X") if X is None else X, path), path)


def check_images(X, path="images") -> np.ndarray:
    if X.ndim == 3:  # (N,H,W) grey: add the channel axis
        X = X[..., None]
    if X.ndim != 4 or X.shape[-1] not in (1, 3):
        raise UserError(f"{path}: X must be images shaped (N,H,W,C) with C in (1,3), got shape {X.shape}")
    if X.dtype != np.uint8:
        raise UserError(f"{path}: X must be uint8 images, got {X.dtype} (store pixels 0-255, never floats)")
    if len(X) == 0:
        raise UserError(f"{path}: X holds no images")
    return X


def _check_labels(y, n, path, key):
    if y.ndim != 1 or len(y) != n:
        raise UserError(f"{path}: '{key}' must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: '{key}' must hold integers, got {y.dtype}")
    return y.astype(np.int64)


def load_images(path) -> np.ndarray:
    """Only the images of a split: what an unsupervised training step may read."""
    npz = _open(path)
    return _read_images(npz, path)


@dataclass
class Split:
    """A labelled or pseudo-labelled split. `labels` is what episodes are drawn from."""

    X: np.ndarray
    Y: np.ndarray
    cluster_label: np.ndarray | None = None
    index: np.ndarray | None = None  # row of the prepared split each image came from (repeats share it)
    meta: dict = field(default_factory=dict)
    path: str = ""

    @property
    def labels(self) -> np.ndarray:
        return self.cluster_label if self.cluster_label is not None else self.Y


def load_split(path) -> Split:
    npz = _open(path)
    X = _read_images(npz, path)
    Y = _check_labels(_get(npz, path, "Y"), len(X), path, "Y")
    cl = _check_labels(_get(npz, path, "cluster_label"), len(X), path, "cluster_label") \
        if "cluster_label" in npz.files else None
    index = _get(npz, path, "index").astype(np.int64) if "index" in npz.files else None
    try:
        meta = json.loads(str(_get(npz, path, "meta"))) if "meta" in npz.files else {}
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: 'meta' is not valid JSON ({e})") from None
    return Split(X=X, Y=Y, cluster_label=cl, index=index, meta=meta, path=str(path))


def load_pseudo_labels(path) -> tuple:
    """(X, cluster_label, index) of an encoded train cache, without reading its true labels."""
    npz = _open(path)
    X = _read_images(npz, path)
    cl = _check_labels(_get(npz, path, "cluster_label"), len(X), path, "cluster_label")
    index = _get(npz, path, "index").astype(np.int64) if "index" in npz.files else np.arange(len(X))
    return X, cl, index


def load_cluster_partition(path, cluster_label) -> np.ndarray:
    """(max label + 1,) the k-means partition of each cluster of an encoded train cache, from its per-row
    `partition` array (cfe.encode --partitions); all zeros when it has none. A cluster spanning two partitions is
    an error: its label would be shared by two clusterings."""
    npz = _open(path)
    n_clusters = int(cluster_label.max()) + 1
    if "partition" not in npz.files:
        return np.zeros(n_clusters, np.int64)
    rows = _check_labels(_get(npz, path, "partition"), len(cluster_label), path, "partition")
    out = np.zeros(n_clusters, np.int64)
    out[cluster_label] = rows
    bad = np.flatnonzero(out[cluster_label] != rows)
    if len(bad):
        c = cluster_label[bad[0]]
        raise UserError(f"{path}: cluster {c} has rows in partitions {sorted(set(rows[cluster_label == c].tolist()))}; "
                        f"each cluster must belong to one partition")
    return out


def load_array(path, key) -> np.ndarray:
    return _get(_open(path), path, key)


def array_names(path) -> list:
    """The names of the arrays an .npz holds, none of them read (e.g. whether a cache has true labels Y)."""
    return list(_open(path).files)


def check_split(X, Y, name) -> tuple:
    """(X, Y) as a cache stores them, or a one-line UserError naming `name`: images as `check_images` wants them
    and one integer label per image."""
    X = check_images(np.asarray(X), name)
    return X, _check_labels(np.asarray(Y), len(X), name, "Y")


def write_split(path, X, Y, cluster_label=None, index=None, meta=None, partition=None) -> None:
    X, Y = check_split(X, Y, str(path))
    arrays = {"X": X, "Y": Y}
    for key, value in (("cluster_label", cluster_label), ("index", index), ("partition", partition)):
        if value is not None:
            arrays[key] = np.asarray(value, dtype=np.int64)
    if meta is not None:
        arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    save_npz(path, **arrays)


def assert_disjoint_classes(splits: dict) -> None:
    """Class splits must be disjoint: no true label may appear in two splits."""
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = np.intersect1d(np.unique(splits[a]), np.unique(splits[b]))
            if len(shared):
                raise UserError(f"splits '{a}' and '{b}' share {len(shared)} classes (e.g. {shared[:5].tolist()})")
