"""Train the clustering-friendly embedding (CFE) on unlabelled images.

    python -m cfe.train --data data/omniglot/omniglot_cache_train.npz --out runs/omniglot/cfe --epochs 200

Reads only the images (`X`) of the split. Writes into --out: config.json, metrics.jsonl (one line per epoch),
checkpoints/last.pt after every epoch and checkpoints/epoch_NNNN.pt every --save-every epochs. --resume
continues from last.pt (and starts fresh when there is none), drawing exactly the batches and augmentations an
uninterrupted run would.
"""

import argparse
import functools
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from cfe.augment import CROP_MODES, omniglot_augment
from cfe.model import CFE
from fewshot.backbones import check_image_side, to_float
from fewshot.checkpoint import load_checkpoint, load_state, save_checkpoint, snapshot_path
from fewshot.cli import (
    DEVICE_HELP,
    THREADS_HELP,
    HelpFormatter,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
    unit_float,
)
from fewshot.data import load_images
from fewshot.errors import UserError, cli_main
from fewshot.io import RESUMABLE_CHANGES, JsonlLog, prepare_run_dir, provenance
from fewshot.runtime import epoch_seed, pick_device, seed_everything, set_threads


def get_parser():
    p = argparse.ArgumentParser(prog="python -m cfe.train", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, help="train split .npz (only its images X are read)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--epochs", type=positive_int, default=200, help="epochs over the train images")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per step")
    p.add_argument("--lr", type=positive_float, default=0.03,
                   help="SGD learning rate at the start of the cosine schedule")
    p.add_argument("--momentum", type=nonneg_float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-4, help="SGD weight decay")
    p.add_argument("--no-cos", dest="cos", action="store_false", help="constant lr instead of the cosine schedule")
    p.add_argument("--hidden", type=positive_int, default=64, help="conv channels of the Conv4 backbone")
    p.add_argument("--dim", type=positive_int, default=64, help="embedding dimension")
    p.add_argument("--no-mlp", dest="mlp", action="store_false", help="linear head instead of the MLP head")
    p.add_argument("--queue-size", type=positive_int, default=65536, help="number of past keys kept as negatives")
    p.add_argument("--key-momentum", type=unit_float, default=0.999, help="EMA momentum m of the key encoder")
    p.add_argument("--temperature", type=positive_float, default=0.2, help="softmax temperature T of the loss")
    p.add_argument("--bn-splits", type=positive_int, default=1,
                   help="BatchNorm statistics per group of batch/N images, with keys shuffled across groups "
                        "(4 emulates upstream's 4-GPU run in one process)")
    p.add_argument("--per-split-loss", action="store_true",
                   help="compare each image's centre only with the centres of its own BatchNorm split (and the "
                        "queue), one loss per split, averaged: upstream's per-GPU loss; needs --bn-splits > 1")
    p.add_argument("--crop", choices=CROP_MODES, default="clamped",
                   help="how crop boxes are drawn (cfe/augment.py): torchvision is upstream's RandomResizedCrop, "
                        "clamped also zooms out on about one view in six")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the weights, batches and augmentation (0 .. 2**31 - 1)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    p.add_argument("--save-every", type=positive_int, default=20, help="keep a snapshot every N epochs")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoints/last.pt if present")
    p.add_argument("--halt-after", type=int, default=0, help=argparse.SUPPRESS)  # tests: stop as if interrupted
    return p


def cosine_lr(base_lr, epoch, epochs, cos=True):
    # as facebookresearch/moco main_moco.py adjust_learning_rate: set once per epoch
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) if cos else base_lr


def train_step(model, optimizer, images, gen, augment) -> torch.Tensor:
    """One CFE step on a batch of uint8 NHWC images: two augmented views, loss, SGD update (skipped when the
    loss is not finite, which the caller turns into an error). Returns the loss."""
    x = to_float(images)
    loss = model(augment(x, gen), augment(x, gen), gen)
    if torch.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.detach()


def check_step_settings(batch_size, queue_size, bn_splits, per_split_loss=False) -> None:
    """A clear error for a batch / queue / BatchNorm-split combination the CFE step cannot run."""
    if min(batch_size, queue_size) < 1:
        raise UserError(f"--batch-size and --queue-size must be >= 1, got {batch_size} and {queue_size}")
    if batch_size > queue_size:
        raise UserError(f"--batch-size {batch_size} must not exceed --queue-size {queue_size}")
    if bn_splits < 1 or batch_size % bn_splits:
        raise UserError(f"--bn-splits {bn_splits} must be >= 1 and divide --batch-size {batch_size}")
    if per_split_loss and bn_splits < 2:
        raise UserError("--per-split-loss needs --bn-splits of 2 or more")


def main(argv=None):
    args = get_parser().parse_args(argv)
    config = vars(args).copy()
    check_step_settings(args.batch_size, args.queue_size, args.bn_splits, args.per_split_loss)
    set_threads(args.threads)
    device = pick_device(args.device)
    X = torch.from_numpy(load_images(args.data))  # NxHxWxC uint8; never the labels
    n, h, w, c = X.shape
    if h != w:
        raise UserError(f"{args.data}: images must be square, got {h}x{w}")
    check_image_side(h, args.data)
    if n < args.batch_size:
        raise UserError(f"{args.data}: {n} images, fewer than one batch of {args.batch_size}")
    out = Path(args.out)
    last = out / "checkpoints" / "last.pt"
    resuming = args.resume and last.exists()
    # the cosine schedule depends on --epochs, so unlike MAML's a CFE run cannot be lengthened on resume
    prepare_run_dir(out, config, resume=args.resume, may_change=tuple(k for k in RESUMABLE_CHANGES if k != "epochs"),
                    added={"bn_splits": 1, "crop": "clamped", "per_split_loss": False})
    config["image_shape"] = [h, w, c]

    seed_everything(args.seed)
    model = CFE(in_channels=c, hidden=args.hidden, image_size=h, dim=args.dim, mlp=args.mlp,
                queue_size=args.queue_size, momentum=args.key_momentum, temperature=args.temperature,
                bn_splits=args.bn_splits, per_split_loss=args.per_split_loss)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    start = 0
    if resuming:
        ckpt = load_checkpoint(last, "cfe")
        load_state(model, ckpt["model"], last)
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["epoch"]
        print(f"resumed from {last} at epoch {start}")
    log = JsonlLog(out / "metrics.jsonl", start_epoch=start)
    X = X.to(device)
    augment = functools.partial(omniglot_augment, crop=args.crop)
    steps = n // args.batch_size  # drop the last partial batch, as upstream (drop_last=True)

    for epoch in range(start, args.epochs):
        if args.halt_after and epoch >= args.halt_after:
            print(f"halted after epoch {epoch} (--halt-after)")
            return
        lr = cosine_lr(args.lr, epoch, args.epochs, args.cos)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gen = torch.Generator(device=device).manual_seed(epoch_seed(args.seed, epoch))
        perm = torch.randperm(n, generator=gen, device=device)
        model.train()
        t0, total = time.time(), 0.0
        bar = tqdm(range(steps), desc=f"cfe epoch {epoch + 1}/{args.epochs}", leave=False, mininterval=2)
        for i in bar:
            loss = train_step(model, optimizer, X[perm[i * args.batch_size:(i + 1) * args.batch_size]], gen, augment)
            if not torch.isfinite(loss):
                kept = f"; last good checkpoint: {last}" if last.exists() else ""
                raise UserError(f"non-finite loss {loss.item()} at epoch {epoch + 1} step {i}{kept}")
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # redrawn at mininterval, not every step
        row = dict(epoch=epoch + 1, loss=total / steps, lr=lr, seconds=round(time.time() - t0, 2))
        log.write(**row)
        print(f"cfe epoch {epoch + 1}/{args.epochs} loss {row['loss']:.4f} lr {lr:.4f} ({row['seconds']:.0f}s)")
        state = dict(arch=model.arch, model=model.state_dict(), optimizer=optimizer.state_dict(),
                     epoch=epoch + 1, config=config, provenance=provenance())
        # the snapshot first: a run killed between the two writes resumes from the previous last.pt and redoes
        # this epoch bit-identically, rather than finding its last epoch done and its final snapshot missing
        if (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs:
            save_checkpoint(snapshot_path(out, epoch + 1), "cfe", **state)
        save_checkpoint(last, "cfe", **state)


def load_cfe(path, device="cpu") -> CFE:
    """The trained model of a cfe checkpoint, ready to embed."""
    ckpt = load_checkpoint(path, "cfe")
    try:
        model = CFE(**ckpt["arch"])
    except (KeyError, TypeError) as e:  # a hand-made or truncated checkpoint dict
        raise UserError(f"{path}: cfe checkpoint without a usable 'arch' entry ({e!r})") from None
    load_state(model, ckpt.get("model"), path)
    model.trained_epochs = ckpt.get("epoch")  # recorded by cfe.encode beside its pseudo-labels
    return model.to(device).eval()


if __name__ == "__main__":
    cli_main(main, resumable=True)
