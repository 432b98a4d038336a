"""Embed the train split with a CFE checkpoint, pseudo-label it by k-means, write every split's cache.

    python -m cfe.encode --checkpoint runs/omniglot/cfe/checkpoints/last.pt --data-dir data/omniglot \\
        --dataset omniglot --out runs/omniglot/caches --clusters 500
    python -m cfe.encode --labels pixels --data-dir data/omniglot --dataset omniglot --out runs/omniglot/caches-pixels

--labels picks how the train split is labelled (cfe/tasks.py): kmeans (the default: k-means of the CFE embedding,
PL-CFE), pixels (the same k-means on the raw pixels, CACTUs' floor), random (uniform random labels, the sanity
floor) or oracle (the true train labels, supervised: the ceiling, accepted only with --supervised too, and marked
"supervised": true in encode.json and every cache's meta). Only kmeans reads a --checkpoint; the others' features,
and so the dim of the file names, are the raw pixels (H*W*C). Every mode writes the caches below.

Writes {dataset}_{dim}_K_{K}_{train,val,test}.npz, {...}_train_clusters.npz and {...}_train_emb.npz (K =
--clusters; upstream cfe/cfe_encoding.py's names), then encode.json, which names them under "caches" with the
dataset, dim and K, so that the next stage reads them from there rather than from the names (docs/design.md, cache
contract). encode.json is written last: its presence means the caches are complete.

Train images of clusters smaller than --min-cluster-size are repeated up to that size so that every cluster can
supply a task. Val and test are copied with their true labels as cluster labels. The train split's true labels
never reach the clustering (but with --labels oracle, whose labels they are): before it they are only checked (one
integer per image, no class shared with val or test); after it they give ARI/NMI/ACC/purity as a diagnostic and are
carried into the cache unchanged, and, once the caches are written, score one more k-means of the features with K =
the number of true classes ("quality_at_true_k", as unsupervised-clustering papers report; null for random and
oracle, which cluster nothing). Every cache records the embedding's train data ("embedding_data") and loss
("embedding_loss", cfe.train --loss; null without a checkpoint).

With --partitions P, k-means runs P times (seeds --seed .. --seed + P - 1; random: P draws) and the train cache
holds every partition's clusters, labelled one after the other, each image once per partition, with a `partition`
array saying which partition each row belongs to; maml.train then draws each task from one partition.

--kmeans sklearn clusters as upstream did (scikit-learn, k-means++ starts, the best of 10 runs), many times slower
than the default faiss run, for reproducing upstream's pseudo-labels.

--checkpoint also takes upstream PL-CFE's pretrained checkpoints (checkpoint_0199.pth.tar; cfe/upstream.py): its
conv4 for 28 px grey images, its ResNet-50 for 84 px RGB ones.
"""

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cfe.tasks import KMEANS, MODES, check_mode, kmeans, knn_smooth, pixel_features, pseudo_labels, resolve_clusters
from cfe.train import without_added_settings
from cfe.upstream import load_any
from fewshot.backbones import to_float
from fewshot.cli import DEVICE_HELP, THREADS_HELP, make_parser, nonneg_int, positive_int, seed_int
from fewshot.data import (
    SPLITS,
    assert_disjoint_classes,
    check_split,
    encoded_path,
    load_array,
    load_images,
    load_split,
    prepared_path,
    write_split,
)
from fewshot.errors import UserError, cli_main
from fewshot.io import file_sha256, load_json, prepare_run_dir, provenance, save_json, save_npz
from fewshot.metrics import cluster_quality
from fewshot.runtime import pick_device, set_threads


def get_parser():
    p = make_parser("python -m cfe.encode", __doc__)
    p.add_argument("--labels", choices=MODES, default="kmeans",
                   help="how the train split is labelled (cfe/tasks.py): kmeans of the CFE embedding, kmeans of the "
                        "raw pixels, uniform random labels, or oracle: its true labels (supervised; needs "
                        "--supervised)")
    p.add_argument("--supervised", action="store_true",
                   help="confirms --labels oracle: the caches then hold true labels and are marked supervised")
    p.add_argument("--checkpoint",
                   help="--labels kmeans: cfe checkpoint (.pt), or upstream PL-CFE's (checkpoint_0199.pth.tar: "
                        "cfe/upstream.py)")
    p.add_argument("--data-dir", required=True, help="folder with {dataset}_cache_{train,val,test}.npz")
    p.add_argument("--dataset", required=True, help="dataset name, used in file names")
    p.add_argument("--out", required=True, help="folder for the caches")
    p.add_argument("--clusters", type=positive_int, metavar="K",
                   help="number of clusters, the K of the cache file names (default 500; --labels oracle: the "
                        "number of true train classes, which a given K must equal)")
    p.add_argument("--kmeans", choices=KMEANS, default="faiss",
                   help="faiss: one run from a random start (fast); sklearn: upstream's scikit-learn call, k-means++ "
                        "and the best of 10 runs (many times slower, for reproducing upstream)")
    p.add_argument("--niter", type=positive_int, default=100, help="faiss k-means iterations")
    p.add_argument("--knn-smooth", type=nonneg_int, default=0, metavar="M",
                   help="cluster each feature vector (embedding or pixels) averaged with its M nearest neighbours "
                        "(0: off)")
    p.add_argument("--partitions", type=positive_int, default=1, metavar="P",
                   help="k-means partitions with seeds --seed .. --seed + P - 1, kept side by side in the train "
                        "cache (maml.train draws each task from one)")
    p.add_argument("--min-cluster-size", type=positive_int, default=20,
                   help="repeat smaller clusters' images up to this")
    p.add_argument("--seed", type=seed_int, default=0, help="k-means seed (0 .. 2**31 - 1 - (P - 1))")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="images per forward pass")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    p.add_argument("--resume", action="store_true", help="continue in --out if it holds this configuration: "
                   "nothing to do when its caches come from the checkpoint's current contents")
    return p


@torch.no_grad()
def embed(model, X: np.ndarray, batch_size: int, device, desc="embed") -> np.ndarray:
    """uint8 NHWC images -> NxD float32 normalised embeddings of f_q (head included)."""
    out = []
    for i in tqdm(range(0, len(X), batch_size), desc=desc, leave=False):
        x = to_float(torch.from_numpy(X[i:i + batch_size]).to(device))
        out.append(model.embed(x).float().cpu())
    return torch.cat(out).numpy()


def quality_at_true_k(Z: np.ndarray, Y: np.ndarray, niter: int, seed: int, gpu: bool = False) -> dict | None:
    """cluster_quality of a k-means of Z with K = the number of true classes in Y (None for a single class, where
    every clustering scores the same), "clusters" being that K. A diagnostic only: call it after the caches are
    written, so that the true labels never reach the clustering that made them."""
    k = len(np.unique(Y))
    if k < 2:
        return None
    _, assign = kmeans(Z, k, niter, seed, gpu=gpu)
    return {**cluster_quality(Y, assign), "clusters": k}  # the K asked for, even if k-means left one empty


def embedding_data(config) -> dict:
    """Which data the embedding was trained on: cfe.train's --data (from the checkpoint's config; None in a
    checkpoint without one, e.g. another tool's) and the dataset, source and excluded classes that the prepare.json
    beside it records (None where it or the key is missing). A relative --data is read from the current folder."""
    data = config.get("data") if isinstance(config, dict) else None
    info = {}
    if data is not None:
        prepare = Path(data).parent / "prepare.json"
        info = load_json(prepare) if prepare.is_file() else {}
        if not isinstance(info, dict):
            raise UserError(f"{prepare}: not a JSON object")
    return {"data": None if data is None else str(data),
            **{key: info.get(key) for key in ("dataset", "source", "excluded_classes")}}


def read_inputs(args, arch) -> tuple:
    """Every input, checked before the run folder is created so that a bad one leaves nothing behind; resolves
    args.clusters (for oracle, from the true classes). `arch`: the checkpoint's, None without one (any image shape).
    Returns (train images, train labels: checked now, read again only after k-means but by oracle, {val/test:
    Split})."""
    paths = {s: prepared_path(args.data_dir, args.dataset, s) for s in SPLITS}
    if not paths["train"].is_file():
        raise UserError(f"{paths['train']}: file not found (expected {args.dataset}_cache_train.npz "
                        f"in {args.data_dir})")
    X_train = load_images(paths["train"])  # clustering sees images only
    want = X_train.shape[1:] if arch is None else (arch["image_size"], arch["image_size"], arch["in_channels"])
    expects = "the train images are" if arch is None else "the checkpoint expects"
    if X_train.shape[1:] != want:
        raise UserError(f"{paths['train']}: images are {X_train.shape[1:]}, {expects} {want}")
    n = len(X_train)
    if args.seed + args.partitions - 1 > 2**31 - 1:
        raise UserError(f"--seed {args.seed} + --partitions {args.partitions} - 1 exceeds 2**31 - 1")
    if args.knn_smooth >= n:
        raise UserError(f"--knn-smooth {args.knn_smooth} must be smaller than the number of train images ({n})")
    _, Y_train = check_split(X_train, load_array(paths["train"], "Y"), str(paths["train"]))
    args.clusters = resolve_clusters(args.labels, args.clusters, Y_train if args.labels == "oracle" else None)
    if not 1 <= args.clusters <= n:
        raise UserError(f"--clusters {args.clusters} must be between 1 and the number of train images ({n})")
    labelled = {s: load_split(paths[s]) for s in ("val", "test") if paths[s].is_file()}  # val, test: optional
    for s, split in labelled.items():
        if split.X.shape[1:] != want:
            raise UserError(f"{paths[s]}: images are {split.X.shape[1:]}, {expects} {want}")
    assert_disjoint_classes({"train": Y_train, **{s: split.Y for s, split in labelled.items()}})
    return X_train, Y_train, labelled


def write_caches(out, args, dim, X, Y, clustering, Z, labelled, meta) -> dict:
    """Write the caches in the order an interrupted run can resume from (encode.json comes after them all);
    returns {what: file name relative to out}."""
    centres, assign, rows, row_label, row_part = clustering
    several = args.partitions > 1
    meta_array = np.array(json.dumps(meta, sort_keys=True))  # the clusters and embeddings say it too
    names = {}

    def path(what):
        names[what] = encoded_path(out, args.dataset, dim, args.clusters, what).name
        return out / names[what]

    # one partition: no `partition` array, the cache as upstream's
    write_split(path("train"), X[rows], Y[rows], cluster_label=row_label, index=rows, meta=meta,
                partition=row_part if several else None)
    save_npz(path("train_clusters"), cluster_centers=centres, meta=meta_array)
    # NOTE: Z (what k-means clustered) has one row per train image, where upstream's has one per row of the
    # expanded cache; `index` maps them. cluster_label is the first partition's, partition_labels (PxN) all of them
    save_npz(path("train_emb"), Z=Z, cluster_label=assign[0], meta=meta_array,
             **({"partition_labels": assign} if several else {}))
    for s, split in labelled.items():
        write_split(path(s), split.X, split.Y, cluster_label=split.Y, index=np.arange(len(split.X)), meta=meta)
    return names


def up_to_date(out: Path, checkpoint) -> bool:
    """Whether OUT already holds the caches of this checkpoint file's current contents: encode.json (written last)
    records the checkpoint's sha256, so a checkpoint rewritten in place (last.pt) is encoded again. Without a
    checkpoint (--labels pixels, random, oracle), whether encode.json is there."""
    done = out / "encode.json"
    want = None if checkpoint is None else file_sha256(checkpoint)
    return done.is_file() and load_json(done).get("checkpoint_sha256") == want


def features(args, model, X: np.ndarray, device) -> np.ndarray:
    """The train split's features that --labels works on: the CFE embedding (kmeans) or the raw pixels (the
    others: cfe.tasks.pixel_features), smoothed over --knn-smooth neighbours."""
    Z = pixel_features(X) if model is None else embed(model, X, args.batch_size, device, "embed train")
    return knn_smooth(Z, args.knn_smooth)


def describe(args, model, centres, trained_on) -> dict:
    """The meta every cache and encode.json carry: how the labels were made and from what. With a checkpoint, which
    embedding (last.pt is overwritten as training goes on, so its epoch and hash) and which loss trained it."""
    ckpt = args.checkpoint
    return {"labels": args.labels, "supervised": args.labels == "oracle",
            "features": "pixels" if model is None else "embedding",
            "embedding_loss": None if model is None else model.arch["loss"],
            "checkpoint": None if ckpt is None else str(Path(ckpt).resolve()),
            "checkpoint_epoch": None if model is None else model.trained_epochs,
            "checkpoint_sha256": None if ckpt is None else file_sha256(ckpt), "clusters": args.clusters,
            "clusters_used": int(len(centres)), "kmeans": args.kmeans, "niter": args.niter,
            "knn_smooth": args.knn_smooth,
            "partitions": args.partitions, "seed": args.seed, "min_cluster_size": args.min_cluster_size,
            "embedding_data": trained_on, **provenance()}


# cfe.encode settings added after caches were made, with the value that a folder without them was made with
ADDED_SETTINGS = {"labels": "kmeans", "supervised": False, "kmeans": "faiss"}


def main(argv=None):
    args = get_parser().parse_args(argv)
    check_mode(args)
    set_threads(args.threads)
    device = pick_device(args.device)
    model = None if args.checkpoint is None else load_any(args.checkpoint, device)
    X_train, Y_train, labelled = read_inputs(args, None if model is None else model.arch)
    trained_on = embedding_data(None if model is None else model.train_config)  # before the run folder exists
    config = without_added_settings(args.out, vars(args), args.resume, ADDED_SETTINGS)
    out = prepare_run_dir(Path(args.out), config, resume=args.resume)  # the same settings, or an error
    if up_to_date(out, args.checkpoint):
        print(f"{out}: already holds the caches of {args.checkpoint or args.labels} with these settings; "
              "nothing to do")
        return
    t0 = time.time()

    Z = features(args, model, X_train, device)
    gpu = device.type == "cuda"
    # the true train labels reach the labelling only when they are the labels asked for (oracle: supervised)
    clustering = pseudo_labels(args, Z, Y_train if args.labels == "oracle" else None, gpu=gpu)
    centres, assign, rows = clustering[:3]
    meta = describe(args, model, centres, trained_on)
    dim = int(Z.shape[1])  # the embedding's dim, or the pixel count
    caches = write_caches(out, args, dim, X_train, Y_train, clustering, Z, labelled, meta)

    # diagnostics only, after labelling; with several partitions, their mean (each in its own entry)
    each = [cluster_quality(Y_train, a) for a in assign]
    quality = {m: float(np.mean([q[m] for q in each])) for m in each[0]}
    quality["clusters"] = int(len(centres))
    several = args.partitions > 1
    # the features at the true K: what kmeans and pixels cluster; random and oracle cluster nothing
    clustered = args.labels in ("kmeans", "pixels")
    at_true_k = quality_at_true_k(Z, Y_train, args.niter, args.seed, gpu=gpu) if clustered else None
    report = {"dataset": args.dataset, "dim": dim, "caches": caches, "pseudo_label_quality": quality,
              "quality_at_true_k": at_true_k,
              **({"partition_quality": each} if several else {}), "train_images": int(len(X_train)),
              "train_rows": int(len(rows)), "repeated_rows": int(len(rows) - args.partitions * len(X_train)),
              "seconds": round(time.time() - t0, 1), **meta}
    save_json(out / "encode.json", report)
    print(f"--labels {args.labels}" + (" (supervised: the true train labels)" if meta["supervised"] else "")
          + f" K={args.clusters}" + (f" x {args.partitions} partitions" if several else "")
          + f": {quality['clusters']} clusters, {report['repeated_rows']} repeated rows; "
          + f"pseudo-labels vs hidden truth (diagnostic{', mean of the partitions' if several else ''}): "
          + f"ARI {quality['ari']:.3f} NMI {quality['nmi']:.3f} ACC {quality['acc']:.3f} "
          f"purity {quality['purity']:.3f}"
          + (f"; at the true K={at_true_k['clusters']}: ACC {at_true_k['acc']:.3f} NMI {at_true_k['nmi']:.3f} "
             f"ARI {at_true_k['ari']:.3f}" if at_true_k else ""))


if __name__ == "__main__":
    cli_main(main, resumable=True)
