"""Meta-train MAML (+PEM) on the pseudo-labelled caches written by cfe.encode.

    python -m maml.train --caches runs/omniglot/caches --out runs/omniglot/maml
    python -m maml.train --supervised --no-pem --train-cache data/omniglot/omniglot_cache_train.npz \\
        --val-cache data/omniglot/omniglot_cache_val.npz --out runs/omniglot-supervised/maml

--caches DIR reads DIR/encode.json, which names the train cache, its cluster centres and the val and test caches
(docs/design.md, "cache contract"); --train-cache (with --val-cache, --test-cache, --centres) names caches that
cfe.encode did not write. Training reads the train cache's images and pseudo-labels (never its true labels, but
with --supervised). A cache of several k-means partitions (cfe.encode --partitions) gives each task the clusters
of one partition, drawn uniformly, and PEM looks for a way's neighbours within its partition.
Writes into --out: config.json (the settings and the resolved caches, read back by maml.test), metrics.jsonl,
checkpoints/last.pt after every epoch, checkpoints/best.pt (highest val accuracy; the last epoch without a val
cache) and checkpoints/epoch_NNNN.pt every --save-every epochs (for `maml.test --checkpoint best@N`).

torchrun spreads one run over N processes (one GPU each, cuda:LOCAL_RANK, on a GPU machine; else CPU processes):

    torchrun --standalone --nproc_per_node=4 -m maml.train --caches runs/omniglot/caches --out runs/omniglot/maml

Every process draws the same meta-batches of --meta-batch tasks and meta-learns --meta-batch / N of them (N must
divide --meta-batch); the meta-gradients are averaged, so N processes train the model one process trains (up to
float rounding), with the same val accuracies and selection. PEM's rebuilds and the val tasks are split over the
processes too (maml.scaleout). Only rank 0 writes; the processes read the caches and, on --resume, last.pt from a
shared file system. A run may be resumed with another N.
"""

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fewshot.caches import add_cache_options, load_train, load_val_tasks, resolve_caches
from fewshot.checkpoint import load_checkpoint, load_state, save_epoch
from fewshot.cli import (
    DEVICE_HELP,
    THREADS_HELP,
    fraction,
    make_parser,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    unit_float,
)
from fewshot.data import load_array
from fewshot.distributed import all_reduce_mean_, init
from fewshot.episodes import EpisodeSampler
from fewshot.errors import UserError, cli_main
from fewshot.evaluation import task_tensors
from fewshot.io import RESUMABLE_CHANGES, JsonlLog, provenance
from fewshot.metrics import mean_ci95
from fewshot.runtime import epoch_seed, seed_everything, set_threads
from maml.common import evaluate, selection_score
from maml.maml import MAMLNet, meta_loss
from maml.pem import PEM, ClusterIndex
from maml.scaleout import check_meta_batch, gather_accuracies, mean_over_ranks, prepare_on_main, share

# NOTE: the process count may change on --resume: every count draws the same meta-batches and steps with the
# gradient of their mean loss, so a resumed run goes on with the same computation (up to float rounding).
MAY_CHANGE = (*RESUMABLE_CHANGES, "world_size")


def get_parser():
    p = make_parser("python -m maml.train", __doc__)
    add_cache_options(p, centres=True)
    p.add_argument("--out", required=True, help="run folder")
    task = p.add_argument_group("tasks and MAML")
    task.add_argument("--ways", type=positive_int, default=5, help="classes per task")
    task.add_argument("--shots", type=positive_int, default=1, help="support images per way")
    task.add_argument("--queries", type=positive_int, default=5, help="query images per way")
    task.add_argument("--epochs", type=positive_int, default=20, help="meta-training epochs (may grow on --resume)")
    task.add_argument("--batches-per-epoch", type=positive_int, default=100, help="meta-batches per epoch")
    task.add_argument("--meta-batch", type=positive_int, default=8, help="tasks per meta-batch")
    task.add_argument("--inner-lr", type=positive_float, default=0.1, help="inner-loop step size alpha")
    task.add_argument("--inner-steps", type=positive_int, default=1, help="inner-loop steps in training")
    task.add_argument("--meta-lr", type=positive_float, default=1e-3, help="Adam learning rate of the outer loop")
    task.add_argument("--first-order", action="store_true", help="first-order MAML (no second derivatives)")
    task.add_argument("--hidden", type=positive_int, default=64, help="conv channels")
    pem = p.add_argument_group("PEM")
    pem.add_argument("--no-pem", dest="pem", action="store_false", help="plain MAML on the pseudo-labels")
    pem.add_argument("--pem-warmup", type=nonneg_int, default=5, help="epochs before PEM starts")
    pem.add_argument("--pem-eta", type=unit_float, default=0.9, help="a meta-batch is rebuilt with probability 1-eta")
    pem.add_argument("--pem-candidates", type=positive_int, default=5, help="nearest clusters examined per way")
    pem.add_argument("--pem-keep", type=fraction, default=0.75, help="fraction of the chosen cluster kept, in (0, 1]")
    run = p.add_argument_group("validation, checkpoints and runtime")
    run.add_argument("--val-tasks", type=positive_int, default=300, help="val tasks per epoch (fixed set)")
    run.add_argument("--val-steps", type=nonneg_int,
                     help="adaptation steps at validation (default: --inner-steps, as upstream "
                          "train_un_maml_pem.py, whose metalearner.evaluate adapts as in training)")
    run.add_argument("--seed", type=seed_int, default=0, help="seed of the weights and tasks (0 .. 2**31 - 1)")
    run.add_argument("--save-every", type=nonneg_int, default=10, help="keep a snapshot every N epochs (0: none)")
    run.add_argument("--resume", action="store_true", help="continue from --out/checkpoints/last.pt if present")
    run.add_argument("--device", default="auto", help=DEVICE_HELP)
    run.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    return p


def pem_index(args, labels, partition, path: str) -> ClusterIndex:
    """PEM's cluster index, after checking the centres fit the pseudo-labels (before the run folder is written)."""
    centres = load_array(path, "cluster_centers")
    if labels.max() >= len(centres):
        raise UserError(f"cluster labels reach {labels.max()} but only {len(centres)} centres were given")
    # A centre without members (cfe.encode drops them; upstream or hand-made caches may keep them) can be PEM's pick
    # (its empty histogram scores entropy 0) and then leaves no queries to draw, a crash once PEM starts. Refused
    # rather than skipped: centres that disagree with the labels suggest they belong to another clustering, and
    # skipping would silently change which clusters each way examines.
    empty = np.setdiff1d(np.arange(len(centres)), labels).tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise UserError(f"{path}: {len(empty)} of {len(centres)} clusters have no images in the train cache "
                        f"(cluster {shown}); drop their centres and relabel, or pass --no-pem")
    smallest = int(np.unique(partition, return_counts=True)[1].min())  # clusters in the smallest partition
    if not 1 <= args.pem_candidates < smallest:
        raise UserError(f"--pem-candidates {args.pem_candidates} must be in 1..{smallest - 1} (clusters "
                        + ("in the smallest partition " if len(np.unique(partition)) > 1 else "") + "- 1)")
    if smallest <= args.ways:  # each way's queries come from a cluster that is none of the task's ways
        raise UserError(f"PEM needs more clusters than ways: {smallest} clusters, --ways {args.ways}")
    return ClusterIndex(labels, centres, args.pem_candidates, partition)


def resume(last: Path, model, optimizer, pem) -> tuple[int, float]:
    """(epoch to start from, best score so far) after loading last.pt's weights into the run's objects."""
    ckpt = load_checkpoint(last, "maml", required=("model", "optimizer", "epoch", "best_acc")
                           + (("eval_model",) if pem else ()))
    load_state(model, ckpt["model"], last)
    if pem:
        load_state(pem.eval_model, ckpt["eval_model"], last)
    optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt["epoch"], ckpt["best_acc"]


def train_epoch(args, epoch, model, optimizer, pem, sampler, X, device, last, world) -> dict:
    """One epoch of meta-training; returns its metrics row. Its tasks come from (seed, epoch) alone, so a resumed
    run draws what an uninterrupted one would. Every rank draws the whole meta-batch and meta-learns its equal
    share: the mean of the ranks' gradients of their share's mean loss is the gradient of the meta-batch's."""
    rng = np.random.default_rng(epoch_seed(args.seed, epoch))
    mine = share(world, args.meta_batch)
    losses, accs, rebuilt = [], [], 0
    model.train()
    for _ in tqdm(range(args.batches_per_epoch), desc=f"maml epoch {epoch + 1}/{args.epochs}", leave=False,
                  mininterval=2, disable=not world.main):
        tasks = [sampler.sample(rng) for _ in range(args.meta_batch)]
        if pem is not None:
            tasks, was_rebuilt = pem(tasks, X, epoch, rng, mine)
            rebuilt += was_rebuilt
        loss, acc = meta_loss(model, [task_tensors(X, t, device) for t in tasks[mine]], args.inner_steps,
                              args.inner_lr, args.first_order)
        batch_loss, batch_acc = mean_over_ranks([loss.item(), acc], device)  # the meta-batch's: all ranks stop alike
        if not math.isfinite(batch_loss):
            saved = f"; last good checkpoint: {last}" if last.exists() else "; no checkpoint was saved yet"
            raise UserError(f"non-finite meta-loss at epoch {epoch + 1}{saved}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_mean_([p.grad for p in model.parameters()])  # identical on every rank, as are the weights
        optimizer.step()
        losses.append(batch_loss)
        accs.append(batch_acc)
    if pem is not None:
        pem.refresh(model)
    return dict(epoch=epoch + 1, loss=float(np.mean(losses)), train_acc=float(np.mean(accs)),
                pem_rebuilt_batches=rebuilt)


def validate(args, model, X_val, val_tasks, device, world) -> dict:
    """{val_acc, val_ci95} over the fixed val tasks, adapted with --val-steps; {} without a val cache. Each rank
    adapts its share of the tasks; every rank gets all their accuracies, so all take the same decisions."""
    if not val_tasks:
        return {}
    mine = val_tasks[share(world, len(val_tasks))]
    accs = gather_accuracies(evaluate(model, X_val, mine, args.val_steps, args.inner_lr, device, "val", world.main),
                             len(val_tasks), device)
    return dict(zip(("val_acc", "val_ci95"), mean_ci95(accs)))


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.val_steps is None:
        args.val_steps = args.inner_steps
    if args.supervised and args.pem:
        raise UserError("--supervised trains on true labels, which have no cluster centres for PEM; add --no-pem")
    if args.pem and not (args.caches or args.centres):
        raise UserError("PEM needs the train cache's cluster centres: pass --centres (or --no-pem)")
    caches = resolve_caches(args)
    set_threads(args.threads)
    check_meta_batch(args.meta_batch)
    world, device = init(args.device)  # one process (World()) unless torchrun started several: joins them
    config = {**vars(args), **caches, "world_size": world.size}
    # MAMLNet sizes its classifier from one side length
    X_np, labels, partition = load_train(caches["train_cache"], args.supervised, "MAML's network")
    sampler = EpisodeSampler(labels, args.ways, args.shots, args.queries, groups=partition)
    index = pem_index(args, labels, partition, caches["centres"]) if args.pem else None
    X_val, val_tasks = load_val_tasks(caches["val_cache"], X_np.shape[1:], args.ways, args.shots, args.queries,
                                      args.val_tasks, args.seed)
    out = Path(args.out)
    last = out / "checkpoints" / "last.pt"
    resuming = args.resume and last.exists()
    # every input error above was raised by every rank alike, before this first exchange between them
    prepare_on_main(world, out, config, args.resume, MAY_CHANGE)

    seed_everything(args.seed)
    h, _, c = X_np.shape[1:]
    model = MAMLNet(c, args.hidden, h, args.ways).to(device)
    pem = PEM(model, index, args.pem_eta, args.pem_warmup, args.pem_keep, args.inner_steps, args.inner_lr) \
        if args.pem else None
    optimizer = torch.optim.Adam(model.parameters(), lr=args.meta_lr)  # a constant rate, as upstream
    start, best_acc = resume(last, model, optimizer, pem) if resuming else (0, -1.0)  # on every rank
    if resuming and world.main:
        print(f"resumed from {last} at epoch {start}")
    X = torch.from_numpy(X_np)
    log = JsonlLog(out / "metrics.jsonl", start_epoch=start) if world.main else None
    for epoch in range(start, args.epochs):
        t0 = time.time()
        row = train_epoch(args, epoch, model, optimizer, pem, sampler, X, device, last, world)
        row.update(validate(args, model, X_val, val_tasks, device, world))
        row["seconds"] = round(time.time() - t0, 2)  # training and validation
        # NOTE: on equal val accuracy the later epoch wins; upstream train_un_maml_pem.py keeps the earlier one
        # (`best_value < ...`): the later model has meta-trained longer.
        improved, best_acc = selection_score(row) >= best_acc, max(best_acc, selection_score(row))
        if not world.main:  # rank 0 alone logs, prints and saves; every rank holds the same row and weights
            continue
        log.write(**row)
        print(f"maml epoch {epoch + 1}/{args.epochs} loss {row['loss']:.4f} train acc {row['train_acc']:.3f}"
              + (f" val acc {row['val_acc']:.4f}" if val_tasks else "") + f" ({row['seconds']:.0f}s)")
        state = dict(arch=model.arch, model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch + 1,
                     best_acc=best_acc, config=config, provenance=provenance(),
                     selection="best val accuracy" if val_tasks else "last epoch (no val split)",
                     **({"eval_model": pem.state_dict()} if pem else {}))
        save_epoch(out, "maml", epoch + 1, args.save_every, improved, state)


if __name__ == "__main__":
    cli_main(main, resumable=True, distributed=True)
