"""Wall time and objective of our k-means (cfe.tasks.kmeans) against scikit-learn's KMeans as upstream PL-CFE ran it.

    python bench/kmeans.py                                  # synthetic: 22,000 x 64 unit rows, K 500, all 3 methods
    python bench/kmeans.py --repeat-points 1 10 --repeats 3 # the same points, then 10x as many
    python bench/kmeans.py --checkpoint runs/omniglot/cfe/checkpoints/last.pt \\
        --data data/omniglot/omniglot_cache_train.npz       # the real train embeddings cfe.encode clusters
    python bench/kmeans.py --methods ours sklearn-matched --threads 2

Methods, all on every point (no subsampling) with --clusters K and --seed:
    ours              cfe.tasks.kmeans: faiss, random init, one run of at most --niter iterations (cfe.encode's)
    sklearn-upstream  sklearn.cluster.KMeans(init="k-means++", n_init=10, max_iter=3000): upstream's cfe_encoding.py
    sklearn-matched   the same KMeans with n_init=1 and max_iter=--niter: one run, capped as ours is

Points: by default a seeded Gaussian mixture (--points x --dim, --true-clusters components), rows L2-normalised
as cfe.encode's embeddings are; or, with --checkpoint and --data, that checkpoint's embedding of the cache's
images, made by cfe.encode's own `features` (so exactly the points it clusters). --repeat-points R clusters the
points plus R - 1 noisy copies of each (noise N(0, (0.05 x each dimension's std)^2), seeded, rows re-normalised):
R x as many points of the same shape; R = 1 is the points themselves.

Every method's --repeats runs are interleaved (one of each in turn) so that a slowdown of the machine hits all
alike; each row reports the median and fastest wall time, the ratio of its median to ours, and the k-means
objective (the sum over every point of its squared distance to the nearest returned centre, computed by one
float64 function for all methods, not each library's own inertia) with its difference relative to ours. "goal"
reports the target: ours at least 10x faster than sklearn-upstream with an objective at most 0.5% above its.
"""

import argparse
import json
import statistics

import numpy as np

# torch, faiss and scikit-learn are imported where used, after the inputs are checked: a refused input is answered
# at once rather than after seconds of imports
from fewshot.cli import THREADS_HELP, HelpFormatter, nonneg_int, positive_int, seed_int
from fewshot.errors import UserError, cli_main, require_file

METHODS = ("ours", "sklearn-upstream", "sklearn-matched")
SYNTHETIC = {"points": 22000, "dim": 64, "true_clusters": 1100}  # Omniglot's train split: 1,100 classes x 20
NOISE = 0.05  # --repeat-points' noise, in units of each dimension's std
FAISS_RUNS = []  # iterations of each faiss k-means run, once count_faiss_iterations() is on


def objective(Z: np.ndarray, centres: np.ndarray, batch: int = 8192) -> float:
    """Sum over the rows of Z of the squared distance to the nearest centre, in float64, in batches of rows (the
    whole N x K matrix at 220,000 x 500 would take 0.9 GB): |z|^2 - 2 z.c + |c|^2, clipped at 0 against rounding."""
    C = np.asarray(centres, np.float64)
    cc = (C * C).sum(1)
    total = 0.0
    for i in range(0, len(Z), batch):
        z = np.asarray(Z[i:i + batch], np.float64)
        d = (z * z).sum(1, keepdims=True) - 2 * z @ C.T + cc
        total += np.maximum(d.min(1), 0).sum()
    return float(total)


def synthetic(points: int, dim: int, components: int, seed: int) -> np.ndarray:
    """A Gaussian mixture: means of norm about 1, each point a mean plus noise of norm about 0.5 (clusters that overlap
    a little, as embeddings' do), then the rows L2-normalised. float32, as an embedding."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(components, dim)) / np.sqrt(dim)
    Z = means[rng.integers(0, components, points)] + rng.normal(0, 0.5 / np.sqrt(dim), (points, dim))
    return (Z / np.linalg.norm(Z, axis=1, keepdims=True)).astype(np.float32)


def embeddings(checkpoint: str, data: str) -> np.ndarray:
    """The train embedding cfe.encode clusters by default: its checkpoint loader and its `features` (no smoothing,
    its default --batch-size), on the CPU."""
    import torch

    import cfe.encode as encode
    from cfe.upstream import load_any
    from fewshot.data import load_images

    model = load_any(require_file(checkpoint, "checkpoint"), "cpu")  # load_cfe, or upstream's as cfe.encode takes
    X = load_images(require_file(data, "train cache"))
    arch = model.arch
    want = (arch["image_size"], arch["image_size"], arch["in_channels"])
    if X.shape[1:] != want:
        raise UserError(f"{data}: images are {X.shape[1:]}, the checkpoint expects {want}")
    settings = argparse.Namespace(knn_smooth=0, batch_size=encode.get_parser().get_default("batch_size"))
    return encode.features(settings, model, X, torch.device("cpu"))


def repeated(Z: np.ndarray, r: int, seed: int) -> np.ndarray:
    """Z and r - 1 noisy, re-normalised copies of it (NOISE x each dimension's std), one after the other."""
    if r == 1:
        return Z
    rng = np.random.default_rng(seed)
    copies = Z[None] + rng.normal(0, 1, (r - 1, *Z.shape)).astype(np.float32) * (NOISE * Z.std(0))
    copies /= np.linalg.norm(copies, axis=2, keepdims=True)
    return np.concatenate([Z, copies.reshape(-1, Z.shape[1])])


def count_faiss_iterations() -> None:
    """From now on every faiss.Kmeans.train call appends the iterations it ran to FAISS_RUNS. faiss stops before
    --niter once the objective no longer changes, and cfe.tasks.kmeans returns only centres and labels, so the
    count is read from the faiss object it trains (len(obj): one objective per iteration)."""
    import faiss

    train = faiss.Kmeans.train

    def counted(self, *args, **kwargs):
        out = train(self, *args, **kwargs)
        FAISS_RUNS.append(len(self.obj))
        return out

    faiss.Kmeans.train = counted


def run_method(method: str, Z: np.ndarray, args, threads: int) -> tuple:
    """(seconds, centres, iterations) of one run of `method`. scikit-learn's iterations: n_iter_ (of its best run,
    for n_init 10)."""
    import torch
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    from cfe.tasks import UPSTREAM_KMEANS, kmeans
    from fewshot.timing import timed

    out, cpu = {}, torch.device("cpu")
    if method == "ours":
        seconds = timed(lambda: out.update(km=kmeans(Z, args.clusters, args.niter, args.seed)), cpu)
        return seconds, out["km"][0], FAISS_RUNS[-1]
    settings = UPSTREAM_KMEANS if method == "sklearn-upstream" else {**UPSTREAM_KMEANS, "n_init": 1,
                                                                      "max_iter": args.niter}
    km = KMeans(args.clusters, random_state=args.seed, **settings)
    with threadpool_limits(limits=threads):  # its OpenMP and BLAS threads, as faiss's follow torch's
        seconds = timed(lambda: km.fit(Z), cpu)
    return seconds, km.cluster_centers_, int(km.n_iter_)


def get_parser():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--points", type=positive_int, help=f"synthetic points (default {SYNTHETIC['points']})")
    p.add_argument("--dim", type=positive_int, help=f"synthetic dimensions (default {SYNTHETIC['dim']})")
    p.add_argument("--true-clusters", type=positive_int,
                   help=f"synthetic mixture components (default {SYNTHETIC['true_clusters']})")
    p.add_argument("--checkpoint", help="a CFE checkpoint: cluster its embedding of --data instead")
    p.add_argument("--data", help="the train cache (.npz) whose images --checkpoint embeds")
    p.add_argument("--repeat-points", type=positive_int, nargs="+", default=[1], metavar="R",
                   help="cluster the points plus R - 1 noisy copies of each (R x the points); several: each")
    p.add_argument("--clusters", type=positive_int, default=500, metavar="K", help="k-means K")
    p.add_argument("--niter", type=positive_int, help="our iterations and sklearn-matched's max_iter (default: "
                   "cfe.encode's)")
    p.add_argument("--methods", choices=METHODS, nargs="+", default=list(METHODS), help="methods to time")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per method, interleaved")
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    p.add_argument("--seed", type=seed_int, default=0, help="data, noise and k-means seed")
    return p


def check_inputs(args) -> dict | None:
    """One-line errors for inputs given together or half given, and for a K larger than the synthetic points
    (the embedding's is checked once it is made); the synthetic shape, or None for --checkpoint and --data."""
    given = [f"--{k.replace('_', '-')}" for k in SYNTHETIC if getattr(args, k) is not None]
    if (args.checkpoint is None) != (args.data is None):
        raise UserError("--checkpoint and --data go together: the checkpoint embeds the cache's images")
    if args.checkpoint is not None and given:
        raise UserError(f"{' '.join(given)}: synthetic data's settings; drop them with --checkpoint and --data")
    if args.checkpoint is not None:
        return None
    shape = {k: SYNTHETIC[k] if getattr(args, k) is None else getattr(args, k) for k in SYNTHETIC}
    check_clusters(args, shape["points"])
    return shape


def check_clusters(args, n: int) -> None:
    if args.clusters > n * min(args.repeat_points):
        raise UserError(f"--clusters {args.clusters} is more than the {n * min(args.repeat_points)} points")


def main(argv=None):
    args = get_parser().parse_args(argv)
    shape = check_inputs(args)
    import torch

    from fewshot.runtime import set_threads
    from fewshot.timing import device_name

    set_threads(args.threads)  # before the embedding and k-means: ours follows torch's count, sklearn is told it
    threads = torch.get_num_threads()
    count_faiss_iterations()
    if shape is None:
        Z = embeddings(args.checkpoint, args.data)
        check_clusters(args, len(Z))
        inputs = {"kind": "embedding", "checkpoint": args.checkpoint, "data": args.data, "features": "cfe.encode"}
    else:
        Z = synthetic(shape["points"], shape["dim"], shape["true_clusters"], args.seed)
        inputs = {"kind": "synthetic gaussian mixture, unit rows", **shape, "seed": args.seed}
    if args.niter is None:  # cfe.encode's --niter default, read from its parser rather than copied
        from cfe.encode import get_parser as encode_parser
        args.niter = encode_parser().get_default("niter")
    rows, goals = [], []
    for r in args.repeat_points:
        points = repeated(Z, r, args.seed + 1)
        seconds, results = {m: [] for m in args.methods}, {}
        for _ in range(args.repeats):  # interleaved; the same seed each time, so the same work is timed
            for m in args.methods:
                t, *results[m] = run_method(m, points, args, threads)
                seconds[m].append(t)
        obj = {m: objective(points, results[m][0]) for m in args.methods}
        med = {m: statistics.median(s) for m, s in seconds.items()}
        ours = "ours" in args.methods
        for m in args.methods:
            rows.append({"method": m, "repeat_points": r, "points": len(points), "dim": points.shape[1],
                         "clusters": args.clusters, "iterations": results[m][1],
                         "seconds_median": round(med[m], 4), "seconds_min": round(min(seconds[m]), 4),
                         "objective": float(f"{obj[m]:.7g}"),
                         "objective_rel_to_ours": round(obj[m] / obj["ours"] - 1, 5) if ours else None,
                         "time_ratio_to_ours": round(med[m] / med["ours"], 3) if ours else None})
        if ours and "sklearn-upstream" in args.methods:
            speedup = med["sklearn-upstream"] / med["ours"]
            excess = obj["ours"] / obj["sklearn-upstream"] - 1
            goals.append({"repeat_points": r, "speedup_vs_upstream": round(speedup, 2),
                          "objective_above_upstream": round(excess, 5), "met": speedup >= 10 and excess <= 0.005})
    import faiss
    import sklearn

    print(json.dumps({"rows": rows, "goal": goals, "inputs": inputs, "repeat_points": args.repeat_points,
                      "repeat_noise": f"copies 2..R: N(0, ({NOISE} x per-dimension std)^2), re-normalised",
                      "niter": args.niter, "methods": args.methods, "repeats": args.repeats, "seed": args.seed,
                      "threads": threads, "torch": str(torch.__version__), "faiss": faiss.__version__,
                      "sklearn": sklearn.__version__, "machine": device_name(torch.device("cpu"))}, indent=2))


if __name__ == "__main__":
    cli_main(main)
