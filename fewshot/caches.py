"""The caches a meta-learner (maml.train, ep.train, protonet.train) trains on: named by cfe.encode's encode.json
(--caches DIR, docs/design.md "cache contract") or given one by one (--train-cache ...), and the train cache's
labels."""

from pathlib import Path

import numpy as np
import torch

from fewshot.backbones import check_image_side
from fewshot.data import load_cluster_partition, load_pseudo_labels, load_split
from fewshot.episodes import EpisodeSampler
from fewshot.errors import UserError
from fewshot.io import load_json
from fewshot.runtime import epoch_seed


def add_cache_options(p, centres: bool):
    """The 'caches' argument group; `centres`: the meta-learner needs the clusters' centres (PEM)."""
    data = p.add_argument_group("caches")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--caches", help="cfe.encode output folder: its encode.json names every cache")
    source.add_argument("--train-cache", help="train cache not written by cfe.encode (e.g. a prepared "
                                              "*_cache_train.npz with --supervised)")
    data.add_argument("--val-cache", help="with --train-cache: labelled val cache for model selection (omit: keep "
                                          "the last epoch)")
    data.add_argument("--test-cache", help="with --train-cache: labelled test cache, recorded for the test stage")
    if centres:
        data.add_argument("--centres", help="with --train-cache: its cluster centres (.npz), which PEM needs")
    data.add_argument("--supervised", action="store_true",
                      help="reference baseline, not unsupervised: train on the train cache's true labels Y")
    return data


def resolve_caches(args) -> dict:
    """{train_cache, val_cache, test_cache, centres, dataset}: from --caches DIR's encode.json, whose "caches"
    names files in DIR, or the explicit options (val, test and centres may be None)."""
    centres = getattr(args, "centres", None)
    if not args.caches:
        return dict(train_cache=args.train_cache, val_cache=args.val_cache, test_cache=args.test_cache,
                    centres=centres, dataset=None)
    given = [o for o, v in (("--val-cache", args.val_cache), ("--test-cache", args.test_cache),
                            ("--centres", centres)) if v]
    if given:
        raise UserError(f"{', '.join(given)} go with --train-cache; with --caches, {args.caches}/encode.json names "
                        "the caches")
    path = Path(args.caches) / "encode.json"
    doc = load_json(path)
    caches = doc.get("caches") if isinstance(doc, dict) else None
    if not isinstance(caches, dict) or not all(isinstance(caches.get(s), str) for s in ("train", "train_clusters")):
        raise UserError(f"{path}: names no train cache and cluster centres (a 'caches' entry with 'train' and "
                        "'train_clusters'); rerun cfe.encode, or pass --train-cache")

    def named(split):
        return str(Path(args.caches) / caches[split]) if isinstance(caches.get(split), str) else None

    return dict(train_cache=named("train"), val_cache=named("val"), test_cache=named("test"),
                centres=named("train_clusters"), dataset=doc.get("dataset"))


def load_train(path: str, supervised: bool, square_for: str) -> tuple:
    """(X (N,H,W,C) uint8, labels (N,), partition of each label): pseudo-labels, or true ones when `supervised`.
    The images must be square and large enough for the networks; `square_for` says who needs them square."""
    if supervised:  # the one path that reads true train labels, on request, for a supervised reference row
        train = load_split(path)
        X, labels, partition = train.X, train.Y, np.zeros(train.Y.max() + 1, np.int64)
    else:
        X, labels, _ = load_pseudo_labels(path)  # images and pseudo-labels only
        partition = load_cluster_partition(path, labels)  # all 0 but for caches of cfe.encode --partitions
    h, w, _ = X.shape[1:]
    if h != w:
        raise UserError(f"{path}: images are {h}x{w}; {square_for} needs square images")
    check_image_side(h, path)
    return X, labels, partition


def load_val_tasks(path, shape, ways: int, shots: int, queries: int, n: int, seed: int) -> tuple:
    """(val images as a tensor, the n fixed val tasks a run scores every epoch by), or (None, []) without a val
    cache. The tasks come from the run's seed alone, so a resumed run scores epochs as an uninterrupted one."""
    if path is None:
        return None, []
    val = load_split(path)
    if val.X.shape[1:] != shape:
        raise UserError(f"{path}: images {val.X.shape[1:]} differ from the train cache's {shape}")
    sampler = EpisodeSampler(val.labels, ways, shots, queries)
    rng = np.random.default_rng(epoch_seed(seed, 0, stream=7))
    return torch.from_numpy(val.X), [sampler.sample(rng) for _ in range(n)]
