"""Train Embedding Propagation (EP) on the pseudo-labelled caches written by cfe.encode.

    python -m ep.train --caches runs/omniglot/caches --out runs/omniglot/ep
    python -m ep.train --supervised --train-cache data/omniglot/omniglot_cache_train.npz \\
        --val-cache data/omniglot/omniglot_cache_val.npz --out runs/omniglot-supervised/ep

Two stages in one run folder, epochs numbered on (docs/design.md, "EP"): pre-training, --pretrain-epochs passes
over the train images in batches of --batch-size, each image in its four rotations; then episodic fine-tuning,
--finetune-epochs of --tasks-per-epoch tasks, from the pre-training's best model. After every epoch the model is
scored by label propagation on fixed val tasks; a stage's learning rate falls tenfold after --patience epochs
without a better score (upstream's ReduceLROnPlateau). Training reads the train cache's images and
pseudo-labels, never its true labels but with --supervised.
Writes into --out: config.json (read back by ep.test), metrics.jsonl, checkpoints/last.pt after every epoch,
checkpoints/best.pt (the highest val accuracy of all epochs; the last epoch without a val cache) and
checkpoints/epoch_NNNN.pt every --save-every epochs.
"""

import time
from pathlib import Path

import torch

from ep.loop import evaluate, finetune_epoch, pretrain_epoch
from ep.model import EPNet
from fewshot.caches import load_train, load_val_tasks, resolve_caches
from fewshot.checkpoint import load_checkpoint, load_state
from fewshot.cli import make_parser, nonneg_float, nonneg_int, positive_float, positive_int
from fewshot.episodes import EpisodeSampler
from fewshot.episodic import add_run_options, add_trainer_options, end_epoch
from fewshot.errors import UserError, cli_main
from fewshot.io import RESUMABLE_CHANGES, JsonlLog, prepare_run_dir
from fewshot.metrics import mean_ci95
from fewshot.runtime import pick_device, seed_everything, set_threads


def get_parser():
    p = make_parser("python -m ep.train", __doc__)
    add_trainer_options(p, "conv4 (28 px), resnet12 (84 px, the few-shot standard) or a torchvision ResNet")
    pre = p.add_argument_group("stage 1: pre-training")
    pre.add_argument("--pretrain-epochs", type=nonneg_int, default=200, help="passes over the train images")
    pre.add_argument("--batch-size", type=positive_int, default=128, help="images per step (x4 rotations)")
    pre.add_argument("--pretrain-lr", type=positive_float, default=0.1, help="SGD learning rate")
    pre.add_argument("--rotation-weight", type=nonneg_float, default=1.0, help="weight of the rotation loss")
    fine = p.add_argument_group("stage 2: episodic fine-tuning (and the val tasks)")
    fine.add_argument("--finetune-epochs", type=nonneg_int, default=200,
                      help="fine-tuning epochs (may grow on --resume)")
    fine.add_argument("--tasks-per-epoch", type=positive_int, default=600, help="tasks per fine-tuning epoch")
    fine.add_argument("--finetune-lr", type=positive_float, default=0.001, help="SGD learning rate")
    fine.add_argument("--classifier-weight", type=nonneg_float, default=0.1,
                      help="weight of the classifier's loss beside the label-propagation loss")
    fine.add_argument("--ways", type=positive_int, default=5, help="classes per task")
    fine.add_argument("--shots", type=positive_int, default=1, help="support images per way")
    fine.add_argument("--queries", type=positive_int, default=15, help="query images per way")
    run = p.add_argument_group("optimiser, validation, checkpoints and runtime")
    run.add_argument("--weight-decay", type=nonneg_float, default=5e-4, help="SGD weight decay")
    run.add_argument("--patience", type=nonneg_int, default=10,
                     help="epochs without a better val accuracy before the learning rate falls tenfold")
    add_run_options(run, "seed of the weights, batches and tasks")
    return p


def load_train_images(args, path) -> tuple:
    X, labels, partition = load_train(path, args.supervised, "EP's rotation loss")
    if args.pretrain_epochs and len(X) < args.batch_size:
        raise UserError(f"{path}: {len(X)} images, fewer than one batch of --batch-size {args.batch_size}")
    return X, labels, partition


def stage_optimiser(args, model, stage: str):
    """(optimizer, scheduler) of a stage: upstream's SGD (Nesterov momentum 0.9) and ReduceLROnPlateau."""
    lr = args.pretrain_lr if stage == "pretrain" else args.finetune_lr
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=args.weight_decay,
                                nesterov=True)
    return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=args.patience)


def resume(last: Path, model, args) -> tuple:
    """(epoch to start from, best val accuracy, optimizer, scheduler) from last.pt."""
    ckpt = load_checkpoint(last, "ep", required=("model", "optimizer", "scheduler", "epoch", "best_acc"))
    load_state(model, ckpt["model"], last)
    optimizer, scheduler = stage_optimiser(args, model, stage_of(args, ckpt["epoch"] - 1))
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    print(f"resumed from {last} at epoch {ckpt['epoch']}")
    return ckpt["epoch"], ckpt["best_acc"], optimizer, scheduler


def stage_of(args, epoch: int) -> str:
    """The stage of a (zero-based) epoch."""
    return "pretrain" if epoch < args.pretrain_epochs else "finetune"


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.pretrain_epochs + args.finetune_epochs == 0:
        raise UserError("--pretrain-epochs and --finetune-epochs are both 0: nothing to train")
    caches = resolve_caches(args)
    config = {**vars(args), **caches, "learner": "ep"}
    set_threads(args.threads)
    device = pick_device(args.device)
    X_np, labels, partition = load_train_images(args, caches["train_cache"])
    sampler = EpisodeSampler(labels, args.ways, args.shots, args.queries, groups=partition)
    X_val, val_tasks = load_val_tasks(caches["val_cache"], X_np.shape[1:], args.ways, args.shots, args.queries,
                                      args.val_tasks, args.seed)
    out, total = Path(args.out), args.pretrain_epochs + args.finetune_epochs
    last, best = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
    resuming = args.resume and last.exists()
    # fine-tuning may be lengthened on resume; pre-training not, as fine-tuning starts from its end
    prepare_run_dir(out, config, resume=args.resume, may_change=(*RESUMABLE_CHANGES, "finetune_epochs"))

    seed_everything(args.seed)
    h, _, c = X_np.shape[1:]
    model = EPNet(args.backbone, c, args.hidden, h, int(labels.max()) + 1).to(device)
    start, best_acc, optimizer, scheduler = resume(last, model, args) if resuming else \
        (0, -1.0, *stage_optimiser(args, model, stage_of(args, 0)))
    X, labels = torch.from_numpy(X_np), torch.from_numpy(labels)
    log = JsonlLog(out / "metrics.jsonl", start_epoch=start)
    for epoch in range(start, total):
        stage, t0 = stage_of(args, epoch), time.time()
        if epoch == args.pretrain_epochs and epoch > 0:  # fine-tuning starts from the best pre-trained model,
            load_state(model, load_checkpoint(best, "ep")["model"], best)  # which best.pt holds until then
            optimizer, scheduler = stage_optimiser(args, model, stage)
        if stage == "pretrain":
            row = pretrain_epoch(args, epoch, model, optimizer, X, labels, device)
        else:
            row = finetune_epoch(args, epoch, model, optimizer, sampler, X, labels, device)
        if val_tasks:
            row["val_acc"], row["val_ci95"] = mean_ci95(evaluate(model, X_val, val_tasks, device, "val"))
            scheduler.step(row["val_acc"])
        row.update(stage=stage, lr=optimizer.param_groups[0]["lr"], seconds=round(time.time() - t0, 2))
        state = dict(arch=model.arch, model=model.state_dict(), optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict(), epoch=epoch + 1, stage=stage, config=config)
        best_acc = end_epoch(args, "ep", f"ep {stage}", epoch, total, row, best_acc, log, state)


if __name__ == "__main__":
    cli_main(main, resumable=True)
