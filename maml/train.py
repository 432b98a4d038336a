"""Meta-train MAML (+PEM) on a pseudo-labelled cache written by cfe.encode.

    python -m maml.train --train-cache runs/omniglot/caches/omniglot_64_K_500_train.npz \\
        --val-cache runs/omniglot/caches/omniglot_64_K_500_val.npz --out runs/omniglot/maml

Reads the train cache's images and pseudo-labels (never its true labels) and the cluster centres beside it. A
cache of several k-means partitions (cfe.encode --partitions) gives each task the clusters of one partition, drawn
uniformly, and PEM looks for a way's neighbours within its partition.
Writes into --out: config.json (read back by maml.test), metrics.jsonl, checkpoints/last.pt after every epoch,
checkpoints/best.pt (highest val accuracy; the last epoch when no --val-cache is given) and
checkpoints/epoch_NNNN.pt every --save-every epochs (for `maml.test --checkpoint`, e.g. `best@N` to test a
shorter budget with the constant meta-learning rate).
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call
from tqdm import tqdm

from fewshot.backbones import check_image_side, to_float
from fewshot.checkpoint import load_checkpoint, load_state, save_checkpoint, snapshot_path
from fewshot.cli import (
    DEVICE_HELP,
    THREADS_HELP,
    HelpFormatter,
    fraction,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    unit_float,
)
from fewshot.data import load_array, load_cluster_partition, load_pseudo_labels, load_split
from fewshot.episodes import EpisodeSampler
from fewshot.errors import UserError, cli_main
from fewshot.io import RESUMABLE_CHANGES, JsonlLog, prepare_run_dir, provenance
from fewshot.metrics import mean_ci95
from fewshot.runtime import epoch_seed, pick_device, seed_everything, set_threads
from maml.common import evaluate, selection_score, task_tensors
from maml.maml import MAMLNet, adapt, meta_loss
from maml.pem import ClusterIndex, pem_queries


def get_parser():
    p = argparse.ArgumentParser(prog="python -m maml.train", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--train-cache", required=True, help="pseudo-labelled train cache (.npz from cfe.encode)")
    p.add_argument("--clusters", help="cluster centres (.npz); default: the train cache's *_clusters.npz")
    p.add_argument("--val-cache", help="labelled val cache for model selection (omit: keep the last epoch)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--epochs", type=positive_int, default=20, help="meta-training epochs")
    p.add_argument("--batches-per-epoch", type=positive_int, default=100, help="meta-batches per epoch")
    p.add_argument("--meta-batch", type=positive_int, default=8, help="tasks per meta-batch")
    p.add_argument("--ways", type=positive_int, default=5, help="classes per task")
    p.add_argument("--shots", type=positive_int, default=1, help="support images per way")
    p.add_argument("--queries", type=positive_int, default=5, help="query images per way")
    p.add_argument("--inner-lr", type=positive_float, default=0.1, help="inner-loop step size alpha")
    p.add_argument("--inner-steps", type=positive_int, default=1, help="inner-loop steps in training")
    p.add_argument("--meta-lr", type=positive_float, default=1e-3, help="Adam learning rate of the outer loop")
    p.add_argument("--meta-lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant (upstream) or cosine: decayed from --meta-lr to 0 over the run's meta-batches "
                        "(then a run's --epochs is fixed: resuming with other --epochs is refused)")
    p.add_argument("--first-order", action="store_true", help="first-order MAML (no second derivatives)")
    p.add_argument("--hidden", type=positive_int, default=64, help="conv channels")
    p.add_argument("--rotate-ways", action="store_true",
                   help="turn each way's images by a random multiple of 90 degrees (class augmentation)")
    p.add_argument("--no-pem", dest="pem", action="store_false", help="plain MAML on the pseudo-labels")
    p.add_argument("--supervised", action="store_true",
                   help="reference baseline, not unsupervised: train on --train-cache's true labels Y (a prepared "
                        "*_cache_train.npz works); needs --no-pem")
    p.add_argument("--pem-warmup", type=nonneg_int, default=5, help="epochs before PEM starts")
    p.add_argument("--pem-eta", type=unit_float, default=0.9, help="a meta-batch is rebuilt with probability 1-eta")
    p.add_argument("--pem-k", type=positive_int, default=5, help="nearest clusters examined per way")
    p.add_argument("--pem-keep", type=fraction, default=0.75,
                   help="fraction of the chosen cluster kept, in (0, 1]")
    p.add_argument("--val-tasks", type=positive_int, default=300, help="val tasks per epoch (fixed set)")
    p.add_argument("--val-steps", type=nonneg_int,
                   help="adaptation steps at validation (default: --inner-steps, as upstream "
                   "train_un_maml_pem.py, whose metalearner.evaluate adapts as in training)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the weights and tasks (0 .. 2**31 - 1)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    p.add_argument("--save-every", type=nonneg_int, default=10, help="keep a snapshot every N epochs (0: none)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoints/last.pt if present")
    p.add_argument("--halt-after", type=int, default=0, help=argparse.SUPPRESS)  # tests: stop as if interrupted
    return p


def meta_lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """The outer loop's learning rate for meta-batch `step` (0-based) of a run of `total` meta-batches.

    cosine: base * (1 + cos(pi * step / total)) / 2, from base at the first meta-batch towards 0 at the last.
    NOTE: upstream keeps Adam's rate constant; the schedule is an option, a function of the step alone, so a
    resumed run follows it exactly (but a cosine run's snapshot of epoch N is not what an N-epoch run ends with)."""
    if schedule == "constant":
        return base
    assert schedule == "cosine" and 0 <= step < total, (schedule, step, total)
    return base * 0.5 * (1.0 + math.cos(math.pi * step / total))


def rotate_ways(xs, ys, xq, yq, turns: np.ndarray):
    """Every image of way w, support and queries alike, turned by turns[w] quarter turns (NCHW tensors).

    NOTE: not in upstream PL-CFE. Omniglot MAML (Finn et al. 2017, after Santoro et al. 2016) adds each class's
    rotations as new classes; here each way of a task, after PEM, gets one random rotation, so a task never holds
    a cluster twice. On Omniglot's paper preset it cost 0.32 ± 0.33 points at 1 shot within 20 epochs (RESULTS.md),
    so it is off by default.
    """
    def turn(x, y):
        out = x.clone()
        for way, k in enumerate(turns):
            out[y == way] = torch.rot90(x[y == way], int(k), dims=(2, 3))
        return out.contiguous(memory_format=torch.channels_last)
    return turn(xs, ys), ys, turn(xq, yq), yq


def clusters_path(train_cache: str) -> Path:
    p = Path(train_cache)
    if not p.name.endswith("_train.npz"):
        raise UserError(f"{p}: cannot infer the cluster file (name does not end in _train.npz); pass --clusters")
    return p.with_name(p.name[: -len("_train.npz")] + "_train_clusters.npz")


def pem_index(args, pseudo, partition) -> ClusterIndex:
    """PEM's cluster index, after checking the centres fit the pseudo-labels (before the run folder is written)."""
    path = args.clusters or clusters_path(args.train_cache)
    centres = load_array(path, "cluster_centers")
    if pseudo.max() >= len(centres):
        raise UserError(f"cluster labels reach {pseudo.max()} but only {len(centres)} centres were given")
    # A centre without members (cfe.encode drops them; upstream or hand-made caches may keep them) can be PEM's pick
    # (its empty histogram scores entropy 0) and then leaves no queries to draw, a crash once PEM starts. Refused
    # rather than skipped: centres that disagree with the labels suggest they belong to another clustering, and
    # skipping would silently change which k clusters each way examines.
    empty = np.setdiff1d(np.arange(len(centres)), pseudo).tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise UserError(f"{path}: {len(empty)} of {len(centres)} clusters have no images in {args.train_cache} "
                        f"(cluster {shown}); drop their centres and relabel, or pass --no-pem")
    smallest = int(np.unique(partition, return_counts=True)[1].min())  # clusters in the smallest partition
    if not 1 <= args.pem_k < smallest:
        raise UserError(f"--pem-k {args.pem_k} must be in 1..{smallest - 1} (clusters "
                        + ("in the smallest partition " if len(np.unique(partition)) > 1 else "") + "- 1)")
    if smallest <= args.ways:  # each way's queries come from a cluster that is none of the task's ways
        raise UserError(f"PEM needs more clusters than ways: {smallest} clusters, --ways {args.ways}")
    return ClusterIndex(pseudo, centres, args.pem_k, partition)


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.val_steps is None:
        args.val_steps = args.inner_steps
    config = vars(args).copy()
    if args.supervised and args.pem:
        raise UserError("--supervised trains on true labels, which have no cluster centres for PEM; add --no-pem")
    set_threads(args.threads)
    device = pick_device(args.device)
    if args.supervised:  # the one path that reads true train labels, on request, for a supervised reference row
        train = load_split(args.train_cache)
        X_np, pseudo = train.X, train.Y
    else:
        X_np, pseudo, _ = load_pseudo_labels(args.train_cache)  # images and pseudo-labels only
    # the k-means partition of each cluster (all 0 but for caches of cfe.encode --partitions)
    partition = np.zeros(pseudo.max() + 1, np.int64) if args.supervised else \
        load_cluster_partition(args.train_cache, pseudo)
    h, w, c = X_np.shape[1:]
    if h != w:  # MAMLNet sizes its classifier from one side length
        raise UserError(f"{args.train_cache}: images are {h}x{w}; MAML's network needs square images")
    check_image_side(h, args.train_cache)
    sampler = EpisodeSampler(pseudo, args.ways, args.shots, args.queries, groups=partition)
    index = pem_index(args, pseudo, partition) if args.pem else None
    val = load_split(args.val_cache) if args.val_cache else None
    if val is not None and val.X.shape[1:] != X_np.shape[1:]:
        raise UserError(f"{args.val_cache}: images {val.X.shape[1:]} differ from the train cache's {X_np.shape[1:]}")
    val_sampler = EpisodeSampler(val.labels, args.ways, args.shots, args.queries) if val is not None else None
    out = Path(args.out)
    last, best = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
    resuming = args.resume and last.exists()
    # `added`: options newer than some run folders, with the value those runs used
    # a cosine schedule is laid out over --epochs, so only a constant-rate run may grow its budget on resume
    may_change = [k for k in RESUMABLE_CHANGES if k != "epochs" or args.meta_lr_schedule == "constant"]
    prepare_run_dir(out, config, resume=args.resume, may_change=may_change,
                    added={"supervised": False, "meta_lr_schedule": "constant", "rotate_ways": False})

    seed_everything(args.seed)
    model = MAMLNet(c, args.hidden, h, args.ways).to(device)
    eval_model = MAMLNet(c, args.hidden, h, args.ways).to(device)  # PEM's evaluation model
    eval_model.load_state_dict(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.meta_lr)
    start, best_acc = 0, -1.0
    if resuming:
        ckpt = load_checkpoint(last, "maml", required=("model", "eval_model", "optimizer", "epoch", "best_acc"))
        load_state(model, ckpt["model"], last)
        load_state(eval_model, ckpt["eval_model"], last)
        optimizer.load_state_dict(ckpt["optimizer"])
        start, best_acc = ckpt["epoch"], ckpt["best_acc"]
        print(f"resumed from {last} at epoch {start}")
    X = torch.from_numpy(X_np)
    val_tasks = []
    if val is not None:
        vrng = np.random.default_rng(epoch_seed(args.seed, 0, stream=7))
        val_tasks = [val_sampler.sample(vrng) for _ in range(args.val_tasks)]
        X_val = torch.from_numpy(val.X)
    log = JsonlLog(out / "metrics.jsonl", start_epoch=start)

    def predict_with(adapted):
        def predict(rows):
            with torch.no_grad():
                return functional_call(eval_model, adapted, (to_float(X[torch.from_numpy(rows)].to(device)),)).cpu()
        return predict

    for epoch in range(start, args.epochs):
        if args.halt_after and epoch >= args.halt_after:
            print(f"halted after epoch {epoch} (--halt-after)")
            return
        rng = np.random.default_rng(epoch_seed(args.seed, epoch))
        pem_on = args.pem and epoch >= args.pem_warmup
        t0, losses, accs, rebuilt = time.time(), [], [], 0
        model.train()
        bar = tqdm(range(args.batches_per_epoch), desc=f"maml epoch {epoch + 1}/{args.epochs}", leave=False,
                   mininterval=2)
        for i in bar:
            tasks = [sampler.sample(rng) for _ in range(args.meta_batch)]
            if pem_on and rng.random() < 1 - args.pem_eta:
                rebuilt += 1
                new = []
                for t in tasks:
                    xs, ys, _, _ = task_tensors(X, t, device)
                    params = {n: p.detach().requires_grad_() for n, p in eval_model.named_parameters()}
                    adapted = adapt(eval_model, params, xs, ys, args.inner_steps, args.inner_lr, create_graph=False)
                    new.append(pem_queries(t, predict_with(adapted), index, args.queries, rng, args.pem_keep))
                tasks = new
            batch = [task_tensors(X, t, device) for t in tasks]
            if args.rotate_ways:
                batch = [rotate_ways(*b, rng.integers(0, 4, args.ways)) for b in batch]
            loss, acc = meta_loss(model, batch, args.inner_steps, args.inner_lr, args.first_order)
            if not torch.isfinite(loss):
                saved = f"; last good checkpoint: {last}" if last.exists() else "; no checkpoint was saved yet"
                raise UserError(f"non-finite meta-loss at epoch {epoch + 1}{saved}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in optimizer.param_groups:
                group["lr"] = meta_lr_at(epoch * args.batches_per_epoch + i, args.epochs * args.batches_per_epoch,
                                         args.meta_lr, args.meta_lr_schedule)
            optimizer.step()
            losses.append(loss.item())
            accs.append(acc)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.3f}", refresh=False)
        eval_model.load_state_dict(model.state_dict())  # PEM: refresh the evaluation model every epoch
        row = dict(epoch=epoch + 1, loss=float(np.mean(losses)), train_acc=float(np.mean(accs)),
                   pem_rebuilt_batches=rebuilt)
        if val_tasks:
            row["val_acc"], row["val_ci95"] = mean_ci95(evaluate(model, X_val, val_tasks, args.val_steps,
                                                                 args.inner_lr, device, "val"))
        row["seconds"] = round(time.time() - t0, 2)  # training and validation
        score = selection_score(row)
        # NOTE: on equal val accuracy the later epoch wins; upstream train_un_maml_pem.py keeps the earlier one
        # (`best_value < ...`): the later model has meta-trained longer. Ties are rare (7,500 val queries by default);
        # none of the runs in results/ had one.
        improved = score >= best_acc
        best_acc = max(best_acc, score)
        log.write(**row)
        print(f"maml epoch {epoch + 1}/{args.epochs} loss {row['loss']:.4f} train acc {row['train_acc']:.3f}"
              + (f" val acc {row['val_acc']:.4f}" if val_tasks else "") + f" ({row['seconds']:.0f}s)")
        state = dict(arch=model.arch, model=model.state_dict(), eval_model=eval_model.state_dict(),
                     optimizer=optimizer.state_dict(), epoch=epoch + 1, best_acc=best_acc, config=config,
                     selection="best val accuracy" if val_tasks else "last epoch (no val split)",
                     provenance=provenance())
        if improved:
            save_checkpoint(best, "maml", **state)
        if args.save_every and (epoch + 1) % args.save_every == 0:
            save_checkpoint(snapshot_path(out, epoch + 1), "maml", **state)
        save_checkpoint(last, "maml", **state)


if __name__ == "__main__":
    cli_main(main, resumable=True)
