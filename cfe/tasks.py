"""How cfe.encode labels the train split for task construction (`--labels`; docs/design.md, pseudo-labels): every
row of the comparison table made by the same code, on the same splits, into the same caches.

    kmeans   k-means of the CFE embedding (PL-CFE; the default, and the only mode that reads a checkpoint)
    pixels   k-means of the raw pixels: the same faiss k-means, K, seeds and partitions (the floor of CACTUs)
    random   uniformly random labels in [0, K), seeded: the sanity floor
    oracle   the train split's TRUE labels: supervised meta-learning, the ceiling; refused without --supervised

The features of pixels, random and oracle are the raw pixels: each image flattened, scaled to [0, 1] and
L2-normalised (`pixel_features`), so that pixels' k-means works in the same space as kmeans' (unit rows, where
squared distance is 2 - 2 cosine) and differs from it by the features alone. Their dim, the D of the cache names
{dataset}_{D}_K_{K}, is the pixel count H*W*C. random and oracle cluster nothing: their centres (train_clusters,
which PEM ranks the clusters by) are the means of their members' pixel features, as k-means' centres are the means
of theirs.

Only oracle reads the true train labels before the caches are written; the other modes never see them.
"""

import numpy as np
import torch

from fewshot.errors import UserError

MODES = ("kmeans", "pixels", "random", "oracle")
DEFAULT_K = 500  # --clusters of every mode but oracle, whose K is the number of true classes


def check_mode(args) -> None:
    """One-line errors for settings that --labels cannot use, before anything is read or written: a checkpoint is
    kmeans' alone and kmeans needs one; oracle (true labels) must be asked for twice, by name and by --supervised,
    so that no script reaches it by a typo; oracle has one partition; smoothing applies to what k-means clusters."""
    mode = args.labels
    if mode == "kmeans" and args.checkpoint is None:
        raise UserError("--labels kmeans clusters a CFE embedding: give its --checkpoint")
    if mode != "kmeans" and args.checkpoint is not None:
        raise UserError(f"--labels {mode} uses the raw pixels, not an embedding: drop --checkpoint")
    if (mode == "oracle") != args.supervised:
        raise UserError("--labels oracle (the true train labels: supervised, not unsupervised) needs --supervised, "
                        "and --supervised goes with --labels oracle only")
    if mode == "oracle" and args.partitions > 1:
        raise UserError("--labels oracle has one partition, the true classes: drop --partitions")
    if mode in ("random", "oracle") and args.knn_smooth:
        raise UserError(f"--knn-smooth smooths the features k-means clusters; --labels {mode} clusters none")


def resolve_clusters(mode: str, clusters, truth) -> int:
    """K: --clusters (default DEFAULT_K), or for oracle the number of true classes in `truth`, which a given
    --clusters must equal (a K that differs would not be the true classes). `truth`: the true train labels for
    oracle, None for every other mode (which must not read them)."""
    if mode != "oracle":
        return DEFAULT_K if clusters is None else clusters
    k = len(np.unique(truth))
    if clusters not in (None, k):
        raise UserError(f"--labels oracle: K is the {k} true train classes; drop --clusters {clusters} or give {k}")
    return k


def pixel_features(X: np.ndarray, batch: int = 4096) -> np.ndarray:
    """uint8 NHWC images -> N x (H*W*C) float32: each image flattened, scaled to [0, 1] and L2-normalised (an
    all-black image stays zero), in batches so that no float64 copy of the whole split is made."""
    flat = X.reshape(len(X), -1)
    Z = np.empty(flat.shape, np.float32)
    for i in range(0, len(X), batch):
        z = flat[i:i + batch].astype(np.float32) / 255
        Z[i:i + batch] = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)  # as F.normalize
    return Z


KMEANS = ("faiss", "sklearn")  # cfe.encode --kmeans
UPSTREAM_KMEANS = dict(init="k-means++", n_init=10, max_iter=3000)  # scikit-learn's KMeans as upstream calls it


def kmeans(Z: np.ndarray, k: int, niter: int, seed: int, gpu: bool = False, algorithm: str = "faiss") -> tuple:
    """k-means on every point (no subsampling). Returns (centres KxD, assignment N).

    faiss (the default): one run of at most `niter` iterations from a random start, on a GPU when asked and faiss has
    GPU support. sklearn: upstream's call (cfe/cfe_encoding.py), scikit-learn's KMeans with k-means++ starts, the
    best of 10 runs of at most 3,000 iterations (`niter` unused); for reproducing upstream's clustering, many times
    slower for an objective about half a percent lower (BENCHMARKS.md).

    NOTE: upstream clusters the raw head outputs; both algorithms here cluster the normalised ones: the space the CFE
    loss compares in.
    """
    n, d = Z.shape
    if k > n:
        raise UserError(f"--clusters {k} is larger than the number of train images ({n})")
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    if algorithm == "sklearn":
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=torch.get_num_threads()):  # follow --threads, as faiss does
            km = KMeans(k, random_state=seed, **UPSTREAM_KMEANS).fit(Z)
        return km.cluster_centers_.astype(np.float32), km.labels_.astype(np.int64)
    assert algorithm == "faiss", algorithm
    import faiss

    if torch.get_num_threads() > 0:
        faiss.omp_set_num_threads(torch.get_num_threads())  # follow --threads
    # faiss subsamples to 256 points per centroid unless told otherwise; we cluster every point
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, max_points_per_centroid=n, verbose=False,
                      gpu=gpu and hasattr(faiss, "StandardGpuResources"))
    km.train(Z)
    _, assign = km.index.search(Z, 1)
    return km.centroids.copy(), assign[:, 0].astype(np.int64)


def knn_smooth(Z: np.ndarray, m: int) -> np.ndarray:
    """NxD unit rows -> NxD unit rows: each row averaged with its m nearest rows by cosine similarity (exact search).

    NOTE: not in the paper, so off by default. A CFE embedding's nearest neighbours share its true class more often
    than its k-means cluster does, so averaging over them pulls each point towards its class before k-means.
    """
    import faiss

    n, d = Z.shape
    if m == 0:
        return Z
    assert m < n, f"{m} neighbours of {n} points"
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    index = faiss.IndexFlatIP(d)
    index.add(Z)
    _, nb = index.search(Z, m + 1)  # nb: Nx(m+1), usually the point itself first
    # the point itself is always included once, whatever order ties put it in
    nb = np.where((nb == np.arange(n)[:, None]).any(1, keepdims=True), nb, np.c_[np.arange(n), nb[:, :m]])
    S = Z[nb].mean(1)  # NxD
    return S / np.linalg.norm(S, axis=1, keepdims=True)


def repeat_small_clusters(assign: np.ndarray, min_size: int) -> np.ndarray:
    """Row indices of the expanded train split: every non-empty cluster holds >= min_size rows, small clusters'
    members repeated in order (upstream repeats them so a 1-shot task with queries can be drawn from any)."""
    rows = []
    for c in np.unique(assign):
        members = np.flatnonzero(assign == c)
        rows.append(np.resize(members, max(len(members), min_size)))
    return np.sort(np.concatenate(rows), kind="stable")


def class_means(Z: np.ndarray, assign: np.ndarray, k: int) -> np.ndarray:
    """KxD: the mean of each label's rows of Z (zero for a label without any), what k-means' centres are of its
    clusters. Sums with torch's index_add_, which reads Z in place rather than copying it in label order."""
    Zt = torch.from_numpy(np.ascontiguousarray(Z, dtype=np.float32))
    sums = torch.zeros(k, Zt.shape[1]).index_add_(0, torch.from_numpy(assign), Zt)
    counts = np.bincount(assign, minlength=k).astype(np.float32)
    return sums.numpy() / np.maximum(counts, 1)[:, None]


def stack_partitions(parts, min_size: int) -> tuple:
    """[(centres KxD, assign N) of each partition] -> (centres K'xD, assign PxN labels of every point in each
    partition, rows: which point each row of the train cache holds, labels: each row's cluster, part: each row's
    partition), each partition's used clusters relabelled 0.. after the previous partition's (a cluster left empty
    is dropped) and its small clusters repeated to min_size rows."""
    centres, assign, rows, labels, part, offset = [], [], [], [], [], 0
    for p, (c, a) in enumerate(parts):
        used, a = np.unique(a, return_inverse=True)  # relabel to 0..K'-1 in case a cluster is empty
        r = repeat_small_clusters(a, min_size)
        centres.append(c[used])
        assign.append(a + offset)
        rows.append(r)
        labels.append(a[r] + offset)
        part.append(np.full(len(r), p, np.int64))
        offset += len(used)
    return (np.concatenate(centres), np.stack(assign), np.concatenate(rows), np.concatenate(labels),
            np.concatenate(part))


def kmeans_partitions(Z: np.ndarray, k: int, niter: int, seed: int, n_partitions: int, min_size: int,
                      gpu: bool = False, algorithm: str = "faiss") -> tuple:
    """k-means `n_partitions` times (seeds seed, seed + 1, ...), stacked by stack_partitions.

    NOTE: not in the paper, which clusters once, so one partition by default. CACTUs (Hsu et al. 2019) draws its
    tasks from many k-means partitions, so that no single partition's mistakes shape every task; with one
    embedding, the partitions differ only by k-means' seed."""
    return stack_partitions((kmeans(Z, k, niter, seed + p, gpu, algorithm) for p in range(n_partitions)), min_size)


def random_partitions(Z: np.ndarray, k: int, seed: int, n_partitions: int, min_size: int) -> tuple:
    """Labels drawn uniformly from [0, K) for every point, partition p from numpy's generator seeded seed + p,
    centred on their members' mean of Z; stacked by stack_partitions."""
    def one(p):
        a = np.random.default_rng(seed + p).integers(0, k, len(Z))
        return class_means(Z, a, k), a

    return stack_partitions((one(p) for p in range(n_partitions)), min_size)


def oracle_partition(Z: np.ndarray, truth: np.ndarray, min_size: int) -> tuple:
    """The true labels as one partition (relabelled 0.. in the order of their values), centred on their members'
    mean of Z; stacked by stack_partitions. Supervised: the one use of the train split's truth for training."""
    classes, a = np.unique(truth, return_inverse=True)
    return stack_partitions([(class_means(Z, a, len(classes)), a)], min_size)


def pseudo_labels(args, Z: np.ndarray, truth, gpu: bool = False) -> tuple:
    """--labels' partitions of the train split's features Z (stack_partitions' tuple). `truth`: the true train
    labels for oracle, None for the others, which never read them."""
    if args.labels in ("kmeans", "pixels"):
        return kmeans_partitions(Z, args.clusters, args.niter, args.seed, args.partitions, args.min_cluster_size,
                                 gpu=gpu, algorithm=args.kmeans)
    if args.labels == "random":
        return random_partitions(Z, args.clusters, args.seed, args.partitions, args.min_cluster_size)
    assert args.labels == "oracle" and truth is not None, args.labels
    return oracle_partition(Z, truth, args.min_cluster_size)
