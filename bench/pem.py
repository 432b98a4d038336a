"""What PEM costs MAML's meta-training: a rebuilt meta-batch against a plain meta-iteration.

    python bench/pem.py                              # a synthetic Omniglot-sized clustering (22,000 images, K = 500)
    python bench/pem.py --caches runs/omniglot-quick/caches     # cfe.encode's caches: real clusters and centres

A meta-iteration is maml.train's (5-way 1-shot, 5 queries, meta-batch 8, one second-order inner step: forward,
backward, Adam). PEM (maml.pem) rebuilds a meta-batch with probability 1 - eta after its warm-up: it adapts its
evaluation model on each task's support set and predicts every member of the candidate clusters, a forward pass
per cluster (each with its own batch statistics, which is why the clusters are not stacked into one pass). The two
are timed alternately on the same tasks; `rebuild_ratio` is a rebuild's time over a meta-iteration's, and
`overhead_at_eta` the expected extra time per meta-batch, (1 - eta) x rebuild_ratio, at upstream's eta = 0.9.
Random images and an untrained network: the work is the same as in training, the picks are not.
"""

import argparse
import json
import statistics

import numpy as np
import torch

from fewshot.caches import load_train, resolve_caches
from fewshot.cli import THREADS_HELP, HelpFormatter, nonneg_int, positive_int, unit_float
from fewshot.data import load_array
from fewshot.episodes import EpisodeSampler
from fewshot.errors import UserError, cli_main
from fewshot.evaluation import task_tensors
from fewshot.runtime import pick_device, set_threads
from fewshot.timing import device_name, timed
from maml.maml import MAMLNet, meta_loss
from maml.pem import PEM, ClusterIndex


def synthetic(n_images: int, clusters: int, dim: int, seed: int) -> tuple:
    """(X uint8 N x 28 x 28 x 1, labels N, centres K x dim): cluster sizes as uneven as k-means leaves them."""
    rng = np.random.default_rng(seed)
    if clusters > n_images // 20:
        raise UserError(f"--clusters {clusters}: at most {n_images // 20} for {n_images} images (20 per cluster)")
    labels = np.concatenate([np.arange(clusters).repeat(20),  # every cluster can supply a task, as cfe.encode's
                             rng.integers(0, clusters, n_images - 20 * clusters)])
    X = rng.integers(0, 256, (n_images, 28, 28, 1), dtype=np.uint8)
    return X, labels, rng.standard_normal((clusters, dim)).astype(np.float32)


def real(caches: str) -> tuple:
    c = resolve_caches(argparse.Namespace(caches=caches, train_cache=None, val_cache=None, test_cache=None))
    X, labels, _ = load_train(c["train_cache"], False, "MAML's network")
    return X, labels, load_array(c["centres"], "cluster_centers")


def get_parser():
    p = argparse.ArgumentParser(prog="python bench/pem.py", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--caches", help="cfe.encode output folder (default: a synthetic clustering)")
    p.add_argument("--images", type=positive_int, default=22000, help="synthetic: train images (Omniglot's)")
    p.add_argument("--clusters", type=positive_int, default=500, help="synthetic: clusters (upstream's K)")
    p.add_argument("--shots", type=positive_int, default=1)
    p.add_argument("--queries", type=positive_int, default=5, help="queries per way (maml.train's default)")
    p.add_argument("--meta-batch", type=positive_int, default=8)
    p.add_argument("--eta", type=unit_float, default=0.9, help="PEM's eta, for the expected overhead")
    p.add_argument("--iterations", type=positive_int, default=10, help="meta-batches timed, each both ways")
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    X_np, labels, centres = real(args.caches) if args.caches else synthetic(args.images, args.clusters, 64, 0)
    if len(centres) <= 5:  # maml.train's rule: more clusters than PEM's 5 candidates and than the 5 ways
        raise UserError(f"{len(centres)} clusters: PEM needs more than 5 (its candidates per way, and the ways)")
    set_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    X = torch.from_numpy(X_np)
    model = MAMLNet(X.shape[-1], 64, X.shape[1], 5).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # maml.train's defaults: 5 candidates, keep 0.75, one inner step of 0.1; eta 0 rebuilds every meta-batch
    pem = PEM(model, ClusterIndex(labels, centres, 5), eta=0.0, warmup=0, keep=0.75, inner_steps=1, inner_lr=0.1)
    sampler = EpisodeSampler(labels, 5, args.shots, args.queries)
    rng = np.random.default_rng(0)

    def iteration(tasks):
        loss, _ = meta_loss(model, [task_tensors(X, t, device) for t in tasks], 1, 0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    plain, rebuild = [], []
    for i in range(args.iterations + 1):  # the first of each: warm-up, not timed
        tasks = [sampler.sample(rng) for _ in range(args.meta_batch)]
        t_rebuild = timed(lambda ts=tasks: pem(ts, X, 0, rng), device)
        t_plain = timed(lambda ts=tasks: iteration(ts), device)
        if i:
            rebuild.append(t_rebuild)
            plain.append(t_plain)
    ratio = statistics.median(rebuild) / statistics.median(plain)
    print(json.dumps({"iteration_seconds_median": round(statistics.median(plain), 4),
                      "rebuild_seconds_median": round(statistics.median(rebuild), 4),
                      "rebuild_ratio": round(ratio, 2), "eta": args.eta,
                      "overhead_at_eta": round((1 - args.eta) * ratio, 3),
                      "images": len(labels), "clusters": len(centres),
                      "data": args.caches or "synthetic", "shots": args.shots, "queries": args.queries,
                      "meta_batch": args.meta_batch, "iterations": args.iterations,
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device),
                      "machine": device_name(device)}, indent=1))


if __name__ == "__main__":
    cli_main(main)
