"""Nearest-prototype baselines: few-shot accuracy with no (meta-)training at all, on maml.test's tasks.

    python -m fewshot.baseline --cache data/omniglot/omniglot_cache_test.npz --out runs/omniglot-quick/pixels
    python -m fewshot.baseline --cache data/omniglot/omniglot_cache_test.npz --out runs/omniglot-quick/embedding \\
        --checkpoint runs/omniglot-quick/cfe/checkpoints/last.pt

Each way's prototype is the mean of its support images' features; a query takes the way of the nearest prototype
(Euclidean distance), as a prototypical network does. The features are the raw pixels (scaled to [0, 1]), the
identity for an embedding, or with --checkpoint the normalised embeddings of a frozen CFE encoder (a cfe.train or
upstream PL-CFE checkpoint, as cfe.encode embeds): the embedding PL-CFE meta-learns on, with no meta-learning. The
tasks are those maml.test samples from the same labels and seed (fewshot.episodes.sample_tasks), so the results
compare task by task. Writes OUT/config.json and OUT/results/{split}_{ways}w{shots}s.json, as maml.test does; the
result names its method, and the embedding's checkpoint. fewshot.report tables OUT folders named pixels* or
embedding*.
"""

import time
from pathlib import Path

import numpy as np

from fewshot.cli import DEVICE_HELP, THREADS_HELP, make_parser, nonneg_int, positive_int, seed_int
from fewshot.data import load_split
from fewshot.episodes import Task, sample_tasks, tasks_sha256
from fewshot.errors import cli_main
from fewshot.io import file_sha256, provenance, save_json
from fewshot.metrics import CI95_METHOD, format_accuracy, mean_ci95
from fewshot.report import result_name

METHOD = "raw pixels, nearest prototype (no training)"
EMBEDDING_METHOD = "CFE embedding, nearest prototype (no meta-learning)"
EMBEDDING_OPTIONS = ("checkpoint", "batch_size", "device", "threads")  # recorded only with --checkpoint


def get_parser():
    p = make_parser("python -m fewshot.baseline", __doc__)
    p.add_argument("--cache", required=True, help="labelled split to draw the tasks from (.npz with X and Y)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="which split --cache is, for the "
                   "result's name and record")
    p.add_argument("--out", required=True, help="folder for config.json and results/")
    p.add_argument("--ways", type=positive_int, default=5, help="classes per task")
    p.add_argument("--shots", type=positive_int, nargs="+", default=[1, 5], help="support images per way")
    p.add_argument("--queries", type=positive_int, default=5, help="query images per way")
    p.add_argument("--tasks", type=positive_int, default=1000, help="tasks per setting")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the sampled tasks (as maml.test --seed)")
    emb = p.add_argument_group("embedding instead of pixels")
    emb.add_argument("--checkpoint", help="CFE checkpoint (cfe.train's, or upstream PL-CFE's): prototypes of its "
                                          "frozen encoder's normalised embeddings instead of the raw pixels")
    emb.add_argument("--batch-size", type=positive_int, default=1024, help="images per forward pass")
    emb.add_argument("--device", default="auto", help=DEVICE_HELP)
    emb.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    return p


def nearest_prototype_accuracy(features: np.ndarray, task: Task) -> float:
    """Query accuracy of one task. features: N x D, the rows task.support and task.query index."""
    support, query = features[task.support], features[task.query]  # (ways*shots) x D, (ways*queries) x D
    ways = len(task.classes)
    prototypes = np.stack([support[task.support_y == w].mean(0) for w in range(ways)])  # ways x D
    d = ((query[:, None, :] - prototypes[None]) ** 2).sum(-1)  # queries x ways
    return float((d.argmin(1) == task.query_y).mean())


def embedding_features(args, X: np.ndarray) -> tuple[np.ndarray, dict]:
    """(N x D normalised embeddings of the frozen CFE encoder of --checkpoint, what the results record of it)."""
    from cfe.encode import embed, embedding_data  # here: fewshot does not import cfe (nor torch) to start
    from cfe.model import check_fits
    from cfe.upstream import load_any
    from fewshot.runtime import pick_device, set_threads

    set_threads(args.threads)
    device = pick_device(args.device)
    model = load_any(args.checkpoint, device)  # in eval mode
    check_fits(model.arch, X.shape[1:], args.cache)
    info = {"checkpoint": str(Path(args.checkpoint).resolve()), "checkpoint_sha256": file_sha256(args.checkpoint),
            "checkpoint_epoch": model.trained_epochs, "embedding_dim": model.arch["dim"],
            "embedding_data": embedding_data(model.train_config)}
    return embed(model, X, args.batch_size, device, "embed"), info


def main(argv=None):
    args = get_parser().parse_args(argv)
    split = load_split(args.cache)
    out = Path(args.out)
    # every setting's tasks are drawn before anything is written, so a split too small for one leaves no folder
    tasks_of = {shots: sample_tasks(split.labels, args.ways, shots, args.queries, args.tasks, args.seed)
                for shots in args.shots}
    if args.checkpoint:
        method, (features, encoder) = EMBEDDING_METHOD, embedding_features(args, split.X)
        options = vars(args)
    else:  # the pixel baseline's files as they were before --checkpoint existed
        method, encoder = METHOD, {}
        features = split.X.reshape(len(split.X), -1).astype(np.float32) / 255.0  # N x (H*W*C)
        options = {k: v for k, v in vars(args).items() if k not in EMBEDDING_OPTIONS}
    save_json(out / "config.json", {**options, "method": method, **encoder, **provenance()})
    for shots, tasks in tasks_of.items():
        t0 = time.time()
        accs = [nearest_prototype_accuracy(features, t) for t in tasks]
        mean, ci = mean_ci95(accs)
        path = out / "results" / result_name(args.split, args.ways, shots)
        save_json(path, {"method": method, "split": args.split, "cache": args.cache, "seed": args.seed,
                         "tasks": len(tasks), "tasks_sha256": tasks_sha256(tasks), "ways": args.ways,
                         "shots": shots, "queries": args.queries, "steps": 0, "accuracy": mean, "ci95": ci,
                         "ci95_method": CI95_METHOD, "seconds": round(time.time() - t0, 1),
                         "per_task_accuracy": accs, **encoder, **provenance()})
        print(f"{method}: {args.ways}-way {shots}-shot {format_accuracy(mean, ci)} over {len(tasks)} "
              f"{args.split} tasks -> {path}")


if __name__ == "__main__":
    cli_main(main)
