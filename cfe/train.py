"""Train the clustering-friendly embedding (CFE) on unlabelled images.

    python -m cfe.train --data data/omniglot/omniglot_cache_train.npz --out runs/omniglot/cfe --epochs 200
    python -m cfe.train --loss moco ...    # the ablation: the same training with MoCo v2's loss (cfe.loss)
    torchrun --nproc_per_node=4 -m cfe.train --data ... --out ...      # 4 processes (GPUs: one each; CPUs: gloo)

Under torchrun (fewshot.distributed) --batch-size stays the global batch and --bn-splits the global number of
BatchNorm groups: each of the N processes trains on its 1/N of every batch and holds bn_splits/N of the groups, keys
are shuffled across the processes and gathered into every process's queue, and the gradients are averaged, so the N
processes train the model one process trains (to float tolerance): one process with --bn-splits 4 is the twin of 4
GPUs (or 2) with --bn-splits 4. Only rank 0 writes the run folder and prints; a run may resume on another number of
processes.

Reads only the images (`X`) of the split. Writes into --out: config.json, metrics.jsonl (one line per epoch),
checkpoints/last.pt after every epoch and checkpoints/epoch_NNNN.pt every --save-every epochs. --resume
continues from last.pt (and starts fresh when there is none), drawing exactly the batches and augmentations an
uninterrupted run would.

Laid out as facebookresearch/moco main_moco.py (SGD, cosine schedule set once per epoch, the model owning its
queue); the settings are upstream PL-CFE main_cfe_omni.py's (docs/design.md, algorithms: CFE).
"""

import time
from pathlib import Path

import torch
from tqdm import tqdm

from cfe.colour import augment_for
from cfe.loss import LOSSES
from cfe.model import CFE, ONE_PROCESS
from fewshot.backbones import BACKBONES, check_image_side, to_float
from fewshot.checkpoint import load_checkpoint, load_state, save_checkpoint, snapshot_path
from fewshot.cli import (
    DEVICE_HELP,
    THREADS_HELP,
    make_parser,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    unit_float,
)
from fewshot.data import load_images
from fewshot.distributed import all_reduce_mean_, broadcast_object, init
from fewshot.errors import UserError, cli_main
from fewshot.io import RESUMABLE_CHANGES, JsonlLog, load_json, prepare_run_dir, provenance
from fewshot.runtime import epoch_seed, seed_everything, set_threads

# the cosine schedule depends on --epochs, so unlike MAML's a CFE run cannot be lengthened on resume; the number of
# processes may change, as every setting keeps its global meaning (tests/cfe/test_distributed.py)
MAY_CHANGE = tuple(k for k in RESUMABLE_CHANGES if k != "epochs") + ("world_size", "precision", "compile")
# settings added after runs were made, with the value that a run folder without them was made with
ADDED_SETTINGS = {"loss": "cfe"}


def get_parser():
    p = make_parser("python -m cfe.train", __doc__)
    p.add_argument("--data", required=True, help="train split .npz (only its images X are read)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--epochs", type=positive_int, default=200, help="epochs over the train images")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="images per step, over all processes under torchrun (as MoCo's main_moco.py)")
    p.add_argument("--lr", type=positive_float, default=0.03,
                   help="SGD learning rate at the start of the cosine schedule")
    p.add_argument("--momentum", type=nonneg_float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-4, help="SGD weight decay")
    p.add_argument("--backbone", choices=BACKBONES, default="conv4",
                   help="encoder network: conv4 (upstream's Omniglot encoder), resnet12, or torchvision's resnet18 / "
                        "resnet50 (upstream's ImageNet encoder is MoCo's ResNet-50)")
    p.add_argument("--hidden", type=positive_int, default=64,
                   help="conv channels of the conv4 backbone (ignored by the others)")
    p.add_argument("--dim", type=positive_int, default=64, help="embedding dimension")
    p.add_argument("--no-mlp", dest="mlp", action="store_false", help="linear head instead of the MLP head")
    # NOTE: upstream (main_cfe_omni.py) keeps 65,536 keys, but Omniglot's train split has 22,000 images: a queue
    # longer than an epoch still holds every image's own keys from earlier epochs when the image comes round again,
    # and uses them as negatives against its new views. 16,384 keys (under an epoch) hold one only for an image
    # drawn late in one epoch and early in the next.
    p.add_argument("--queue-size", type=positive_int, default=16384,
                   help="number of past keys kept as negatives; fewer than the train images, so that an image's own "
                        "older keys are not among them (upstream: 65536)")
    p.add_argument("--key-momentum", type=unit_float, default=0.999, help="EMA momentum m of the key encoder")
    p.add_argument("--temperature", type=positive_float, default=0.2, help="softmax temperature T of the loss")
    p.add_argument("--loss", choices=LOSSES, default="cfe",
                   help="cfe: PL-CFE's loss (each view pair's centre against the batch's centres and the queue); "
                        "moco: MoCo v2's InfoNCE (each query against its own key and the queue), the plain "
                        "contrastive embedding of the ablation")
    p.add_argument("--bn-splits", type=positive_int, default=4,
                   help="emulate upstream's N-GPU run in one process: BatchNorm statistics and the loss per "
                        "batch/N images, keys shuffled across the N splits (1: one BatchNorm and loss over the batch); "
                        "under torchrun the global number, each process holding N / processes of them")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the weights, batches and augmentation (0 .. 2**31 - 1)")
    p.add_argument("--save-every", type=positive_int, default=20, help="keep a snapshot every N epochs")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoints/last.pt if present")
    run = p.add_argument_group("device and speed")
    run.add_argument("--device", default="auto", help=DEVICE_HELP)
    run.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    # NOTE: fp32 by default, as the recorded results were made; bf16 is the GPU fast path (bench/cfe_step.py)
    run.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                     help="bf16: the encoders' forward passes under bfloat16 autocast (for GPUs with bf16 units)")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the two encoders (a minute or more of compiling first)")
    return p


def check_step_settings(batch_size, queue_size, bn_splits, world_size=1) -> None:
    """A clear error for a batch / queue / BatchNorm-split combination the CFE step cannot run on world_size
    processes (every rank checks, before its first collective, so all of them stop alike)."""
    if min(batch_size, queue_size) < 1:
        raise UserError(f"--batch-size and --queue-size must be >= 1, got {batch_size} and {queue_size}")
    if batch_size > queue_size:  # every rank's queue takes the global batch's keys
        raise UserError(f"--batch-size {batch_size} must not exceed --queue-size {queue_size}")
    if batch_size % world_size:
        raise UserError(f"--batch-size {batch_size} is the global batch and must divide among the {world_size} "
                        f"processes")
    if bn_splits < 1 or batch_size % bn_splits:
        raise UserError(f"--bn-splits {bn_splits} must be >= 1 and divide --batch-size {batch_size}")
    if bn_splits % world_size:
        raise UserError(f"--bn-splits {bn_splits} is the global number of BatchNorm groups and must divide among "
                        f"the {world_size} processes")


def load_train_images(path, batch_size) -> torch.Tensor:
    """The split's images (NxHxWxC uint8, never its labels), checked to be square, large enough for Conv4 and at
    least one batch."""
    X = torch.from_numpy(load_images(path))
    n, h, w, _ = X.shape
    if h != w:
        raise UserError(f"{path}: images must be square, got {h}x{w}")
    check_image_side(h, path)
    if n < batch_size:
        raise UserError(f"{path}: {n} images, fewer than one batch of {batch_size}")
    return X


def build(args, image_shape, device, world=ONE_PROCESS) -> tuple:
    """Model, SGD on f_q and the cosine schedule, as facebookresearch/moco main_moco.py builds them.
    The schedule steps once per epoch with T_max = epochs: lr * 0.5 * (1 + cos(pi * epoch / epochs)), main_moco.py's
    adjust_learning_rate with --cos."""
    h, _, c = image_shape
    model = CFE(in_channels=c, hidden=args.hidden, image_size=h, dim=args.dim, mlp=args.mlp,
                queue_size=args.queue_size, momentum=args.key_momentum, temperature=args.temperature,
                bn_splits=args.bn_splits, backbone=args.backbone, loss=args.loss, world=world)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    return model, optimizer, scheduler


def build_with_defaults(image_shape, device, **settings) -> tuple:
    """build() at cfe.train's defaults, `settings` (its argument names) overriding them: the model and optimiser
    whose step the benchmarks time (bench/cfe_step.py, bench/cfe_upstream.py)."""
    args = get_parser().parse_args(["--data", "", "--out", ""])
    for name, value in settings.items():
        assert hasattr(args, name), f"cfe.train has no setting {name!r}"
        setattr(args, name, value)
    return build(args, image_shape, device)


def train_step(model, optimizer, images, gen, precision="fp32") -> torch.Tensor:
    """One CFE step on a global batch of uint8 NHWC images: two augmented views, the loss on this rank's slice
    (model.world's), f_q's gradients averaged over the ranks, SGD update (skipped when the loss is not finite, which
    the caller turns into an error). Returns the loss averaged over the ranks: the one-process loss of the batch."""
    x = to_float(images)
    augment = augment_for(x.shape[1])  # grey: upstream's Omniglot views; colour: MoCo v2's
    # NOTE: every rank augments the whole global batch and keeps its slice, so the shared generator draws the same
    # numbers on every rank and the key shuffle and later batches agree. The views' draws are per image, in batch
    # order, inside cfe.augment / cfe.colour; drawing only a slice's would need them changed. Cost: world_size
    # times each rank's augmentation, small beside the encoders' forward and backward. The model still gathers the
    # key views from the ranks (MoCo's shuffle BN), which this rank already holds: one more collective per step, so
    # that the model, like MoCo's, does not depend on how its views were made.
    v1, v2 = augment(x, gen), augment(x, gen)
    return step_on_views(model, optimizer, v1, v2, gen, precision)


def step_on_views(model, optimizer, v1, v2, gen, precision="fp32") -> torch.Tensor:
    """train_step after its augmentation, on two views (NCHW float) of the global batch made elsewhere (a
    DataLoader's, bench/cfe_upstream.py): the loss on this rank's slice, f_q's gradients averaged over the ranks,
    SGD update (skipped when the loss is not finite). Returns the loss averaged over the ranks."""
    world, n = model.world, len(v1) // model.world.size
    mine = slice(world.rank * n, (world.rank + 1) * n)  # rank r: rows [r*n, (r+1)*n) of the global batch
    with torch.autocast(v1.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(v1[mine], v2[mine], gen).float()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mean = loss.detach().clone()
    # one collective for f_q's gradients and the loss: the mean of the ranks' gradients is that of the mean of their
    # losses, the one-process loss (upstream's DDP); and every rank takes the same step / non-finite verdict
    all_reduce_mean_([*(p.grad for p in model.encoder_q.parameters()), mean])
    if torch.isfinite(mean):
        optimizer.step()
    return mean


def train_epoch(model, optimizer, X, batch_size, gen, epoch, desc, last, precision="fp32") -> float:
    """One pass over X in the generator's order, dropping the last partial batch as upstream (drop_last=True).
    Every rank draws the same permutation and global batches (a distributed sampler seeded per epoch) and trains on
    its slice of each. Returns the mean loss; a non-finite loss is an error that names the last good checkpoint."""
    perm = torch.randperm(len(X), generator=gen, device=X.device)
    steps = len(X) // batch_size
    model.train()
    total = 0.0
    # redrawn at mininterval, not every step; rank 0's alone
    bar = tqdm(range(steps), desc=desc, leave=False, mininterval=2, disable=not model.world.main)
    for i in bar:
        loss = train_step(model, optimizer, X[perm[i * batch_size:(i + 1) * batch_size]], gen, precision)
        if not torch.isfinite(loss):
            kept = f"; last good checkpoint: {last}" if last.exists() else ""
            raise UserError(f"non-finite loss {loss.item()} at epoch {epoch + 1} step {i}{kept}")
        total += loss.item()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return total / steps


def without_added_settings(out, config: dict, resume: bool, added: dict) -> dict:
    """The settings for prepare_run_dir to compare and record when resuming in a run folder whose config.json was
    written before some settings of `added` ({name: the value a run without it was made with}) existed: `config`
    without those, when it gives them that value; another value is refused as prepare_run_dir refuses a change.
    So the runs made before a setting existed still resume, and their config.json stays as it was."""
    path = Path(out) / "config.json"
    if not (resume and path.is_file()):  # a new run records every setting; a rerun without --resume is refused
        return config
    old = load_json(path)
    missing = [k for k in added if isinstance(old, dict) and k not in old]
    changed = [k for k in missing if config[k] != added[k]]
    if changed:
        raise UserError(f"--resume with settings that differ from {path}: {', '.join(changed)} (a run from before "
                        f"the option, made with {', '.join(f'{k} {added[k]}' for k in changed)})")
    return {k: v for k, v in config.items() if k not in missing}


def prepare_on_rank0(world, out, config, resume, last) -> bool:
    """prepare_run_dir on rank 0 alone (the one writer), its verdict sent to every rank: a bad --out or --resume
    stops every rank with the same error rather than leaving the others waiting in their first collective. Returns
    whether there is a last.pt to resume from (as rank 0 sees it; every rank then loads it)."""
    error = None
    if world.main:
        try:
            prepare_run_dir(out, without_added_settings(out, config, resume, ADDED_SETTINGS), resume=resume,
                            may_change=MAY_CHANGE)
        except UserError as e:  # raised again below, on every rank
            error = str(e)
    error, found = broadcast_object((error, resume and last.exists()))
    if error is not None:
        raise UserError(error)
    return found


def save_epoch(out, last, args, model, optimizer, scheduler, config, row) -> None:
    """Rank 0's printed line and checkpoints of a finished epoch (`row`: its metrics line)."""
    epoch = row["epoch"]
    print(f"cfe epoch {epoch}/{args.epochs} loss {row['loss']:.4f} lr {row['lr']:.4f} ({row['seconds']:.0f}s)")
    state = dict(arch=model.arch, model=model.state_dict(), optimizer=optimizer.state_dict(),
                 scheduler=scheduler.state_dict(), epoch=epoch, config=config, provenance=provenance())
    # the snapshot first: a run killed between the two writes resumes from the previous last.pt and redoes
    # this epoch bit-identically, rather than finding its last epoch done and its final snapshot missing
    if epoch % args.save_every == 0 or epoch == args.epochs:
        save_checkpoint(snapshot_path(out, epoch), "cfe", **state)
    save_checkpoint(last, "cfe", **state)


def main(argv=None):
    args = get_parser().parse_args(argv)
    config = vars(args).copy()
    set_threads(args.threads)
    world, device = init(args.device)  # one process (World()) unless torchrun started several
    config["world_size"] = world.size
    # every rank checks its inputs before any collective, so a bad one stops them all alike
    check_step_settings(args.batch_size, args.queue_size, args.bn_splits, world.size)
    X = load_train_images(args.data, args.batch_size)
    out = Path(args.out)
    last = out / "checkpoints" / "last.pt"
    found = prepare_on_rank0(world, out, config, args.resume, last)
    config["image_shape"] = list(X.shape[1:])

    seed_everything(args.seed)  # the same weights and initial queue on every rank
    model, optimizer, scheduler = build(args, X.shape[1:], device, world)
    start = 0
    if found:
        ckpt = load_checkpoint(last, "cfe", required=("model", "optimizer", "scheduler", "epoch"))
        load_state(model, ckpt["model"], last)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start = ckpt["epoch"]
        if world.main:
            print(f"resumed from {last} at epoch {start}")
    if args.compile:  # in place: the state dict keeps its keys (torch.compile(module) would prefix them)
        model.encoder_q.compile()
        model.encoder_k.compile()
    log = JsonlLog(out / "metrics.jsonl", start_epoch=start) if world.main else None
    X = X.to(device)

    for epoch in range(start, args.epochs):
        lr = optimizer.param_groups[0]["lr"]
        gen = torch.Generator(device=device).manual_seed(epoch_seed(args.seed, epoch))
        t0 = time.time()
        loss = train_epoch(model, optimizer, X, args.batch_size, gen, epoch,
                           f"cfe epoch {epoch + 1}/{args.epochs}", last, args.precision)
        scheduler.step()
        # the ranks' BatchNorm running statistics differ (each saw its own groups); their mean is the one-process
        # run's, and every rank continues from it, so a resumed run sees what an uninterrupted one does
        all_reduce_mean_(model.running_statistics())
        if world.main:
            row = dict(epoch=epoch + 1, loss=loss, lr=lr, seconds=round(time.time() - t0, 2))
            log.write(**row)
            save_epoch(out, last, args, model, optimizer, scheduler, config, row)


if __name__ == "__main__":
    cli_main(main, resumable=True, distributed=True)
