"""Train a prototypical network (Snell et al. 2017) on the pseudo-labelled caches written by cfe.encode.

    python -m protonet.train --caches runs/omniglot/caches --out runs/omniglot/protonet
    python -m protonet.train --supervised --train-cache data/omniglot/omniglot_cache_train.npz \\
        --val-cache data/omniglot/omniglot_cache_val.npz --out runs/omniglot-supervised/protonet

Episodic training: --epochs of --tasks-per-epoch N-way K-shot tasks over the train cache's pseudo-classes, one Adam
step per task on the cross-entropy of the queries' minus squared Euclidean distances to the class-mean prototypes
(protonet.model); the learning rate halves every --halve-every epochs (Snell et al.: every 2000 episodes). After
every epoch the model is scored by the nearest prototype on fixed val tasks. Training reads the train cache's
images and pseudo-labels, never its true labels but with --supervised.
Writes into --out: config.json (learner "protonet", read back by protonet.test), metrics.jsonl, checkpoints/last.pt
after every epoch, checkpoints/best.pt (the highest val accuracy; the last epoch without a val cache) and
checkpoints/epoch_NNNN.pt every --save-every epochs. --resume continues a killed run to the same weights.
"""

import time
from pathlib import Path

import torch

from fewshot.caches import load_train, load_val_tasks, resolve_caches
from fewshot.checkpoint import load_checkpoint, load_state
from fewshot.cli import make_parser, nonneg_float, nonneg_int, positive_float, positive_int
from fewshot.episodes import EpisodeSampler
from fewshot.episodic import add_run_options, add_trainer_options, end_epoch
from fewshot.errors import cli_main
from fewshot.io import JsonlLog, prepare_run_dir
from fewshot.metrics import mean_ci95
from fewshot.runtime import pick_device, seed_everything, set_threads
from protonet.loop import evaluate, train_epoch
from protonet.model import ProtoNet


def get_parser():
    p = make_parser("python -m protonet.train", __doc__)
    add_trainer_options(p, "conv4 (28 px, Snell et al.'s), resnet12 (84 px) or a torchvision ResNet")
    tasks = p.add_argument_group("episodes (and the val tasks)")
    tasks.add_argument("--epochs", type=positive_int, default=100, help="epochs (may grow on --resume)")
    tasks.add_argument("--tasks-per-epoch", type=positive_int, default=500, help="tasks (Adam steps) per epoch")
    tasks.add_argument("--ways", type=positive_int, default=5,
                       help="classes per training task (Snell et al. train with more than they test: 60 on Omniglot)")
    tasks.add_argument("--shots", type=positive_int, default=1, help="support images per way")
    tasks.add_argument("--queries", type=positive_int, default=5, help="query images per way")
    run = p.add_argument_group("optimiser, validation, checkpoints and runtime")
    run.add_argument("--lr", type=positive_float, default=0.001, help="Adam learning rate")
    run.add_argument("--halve-every", type=nonneg_int, default=4,
                     help="epochs between halvings of the learning rate (0: never)")
    run.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="Adam weight decay")
    add_run_options(run, "seed of the weights and tasks")
    return p


def optimiser(args, model) -> tuple:
    """(Adam, its schedule: halved every --halve-every epochs)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.halve_every or 1,
                                           gamma=0.5 if args.halve_every else 1.0)
    return optimizer, step


def resume(last: Path, model, optimizer, scheduler) -> tuple:
    """(epoch to start from, best val accuracy), with model, optimizer and scheduler as last.pt left them."""
    ckpt = load_checkpoint(last, "protonet", required=("model", "optimizer", "scheduler", "epoch", "best_acc"))
    load_state(model, ckpt["model"], last)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    print(f"resumed from {last} at epoch {ckpt['epoch']}")
    return ckpt["epoch"], ckpt["best_acc"]


def main(argv=None):
    args = get_parser().parse_args(argv)
    caches = resolve_caches(args)
    config = {**vars(args), **caches, "learner": "protonet"}
    set_threads(args.threads)
    device = pick_device(args.device)
    X_np, labels, partition = load_train(caches["train_cache"], args.supervised, "the prototypical network")
    sampler = EpisodeSampler(labels, args.ways, args.shots, args.queries, groups=partition)
    X_val, val_tasks = load_val_tasks(caches["val_cache"], X_np.shape[1:], args.ways, args.shots, args.queries,
                                      args.val_tasks, args.seed)
    out = Path(args.out)
    last = out / "checkpoints" / "last.pt"
    resuming = args.resume and last.exists()
    prepare_run_dir(out, config, resume=args.resume)

    seed_everything(args.seed)
    h, _, c = X_np.shape[1:]
    model = ProtoNet(args.backbone, c, args.hidden, h).to(device)
    optimizer, scheduler = optimiser(args, model)
    start, best_acc = resume(last, model, optimizer, scheduler) if resuming else (0, -1.0)
    X = torch.from_numpy(X_np)
    log = JsonlLog(out / "metrics.jsonl", start_epoch=start)
    for epoch in range(start, args.epochs):
        t0 = time.time()
        row = train_epoch(args, epoch, model, optimizer, sampler, X, device)
        row["lr"] = optimizer.param_groups[0]["lr"]  # this epoch's
        scheduler.step()
        if val_tasks:
            row["val_acc"], row["val_ci95"] = mean_ci95(evaluate(model, X_val, val_tasks, device, "val"))
        row["seconds"] = round(time.time() - t0, 2)
        state = dict(arch=model.arch, model=model.state_dict(), optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict(), epoch=epoch + 1, config=config)
        best_acc = end_epoch(args, "protonet", "protonet", epoch, args.epochs, row, best_acc, log, state)


if __name__ == "__main__":
    cli_main(main, resumable=True)
