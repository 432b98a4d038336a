"""How well a CFE embedding clusters the true classes of chosen splits: a diagnostic, never a training step.

    python -m cfe.quality --checkpoint runs/cifar10-quick/cfe/checkpoints/last.pt --data-dir data/cifar10 \\
        --dataset cifar10 --splits train test

Embeds every image of the splits (their classes are disjoint, so together they hold all their classes), runs
k-means with K = the number of classes, and scores the clusters against the true labels: ACC (Hungarian
matching), NMI and ARI, the numbers unsupervised-clustering papers report. Prints them and, with --out, writes
them as JSON with the checkpoint, settings and provenance.
"""

import numpy as np

from cfe.encode import embed, quality_at_true_k
from cfe.model import check_fits
from cfe.upstream import load_any
from fewshot.cli import DEVICE_HELP, THREADS_HELP, make_parser, nonneg_int, positive_int, seed_int
from fewshot.data import SPLITS, assert_disjoint_classes, load_split, prepared_path
from fewshot.errors import UserError, cli_main
from fewshot.io import file_sha256, provenance, save_json
from fewshot.runtime import pick_device, set_threads


def get_parser():
    p = make_parser("python -m cfe.quality", __doc__)
    p.add_argument("--checkpoint", required=True, help="cfe checkpoint (.pt)")
    p.add_argument("--data-dir", required=True, help="folder with {dataset}_cache_{split}.npz")
    p.add_argument("--dataset", required=True, help="dataset name, used in file names")
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=["train"], help="splits clustered together")
    p.add_argument("--out", help="JSON file for the scores")
    p.add_argument("--niter", type=positive_int, default=100, help="k-means iterations")
    p.add_argument("--seed", type=seed_int, default=0, help="k-means seed")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="images per forward pass")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    set_threads(args.threads)
    device = pick_device(args.device)
    model = load_any(args.checkpoint, device)
    splits = {s: load_split(prepared_path(args.data_dir, args.dataset, s)) for s in dict.fromkeys(args.splits)}
    for split in splits.values():
        check_fits(model.arch, split.X.shape[1:], split.path)
    assert_disjoint_classes({s: split.Y for s, split in splits.items()})
    Z = np.concatenate([embed(model, split.X, args.batch_size, device, f"embed {s}") for s, split in splits.items()])
    Y = np.concatenate([split.Y for split in splits.values()])
    scores = quality_at_true_k(Z, Y, args.niter, args.seed, gpu=device.type == "cuda")
    if scores is None:
        raise UserError(f"the splits {', '.join(splits)} hold one class: nothing to score")
    print(f"{args.dataset} {'+'.join(splits)}: {len(Y)} images, K = {scores['clusters']} classes: "
          f"ACC {scores['acc']:.3f} NMI {scores['nmi']:.3f} ARI {scores['ari']:.3f}")
    if args.out:
        save_json(args.out, {**scores, "images": int(len(Y)), "splits": list(splits), "dataset": args.dataset,
                             "checkpoint": args.checkpoint, "checkpoint_epoch": model.trained_epochs,
                             "checkpoint_sha256": file_sha256(args.checkpoint), "niter": args.niter,
                             "seed": args.seed, **provenance()})


if __name__ == "__main__":
    cli_main(main)
