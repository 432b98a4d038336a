"""Raw-pixel nearest-prototype baseline: few-shot accuracy with no training at all, on maml.test's tasks.

    python -m fewshot.baseline --cache data/omniglot/omniglot_cache_test.npz --out runs/omniglot-quick/pixels

Each way's prototype is the mean of its support images' pixels (scaled to [0, 1]); a query takes the way of the
nearest prototype (Euclidean distance), as a prototypical network with the identity for an embedding. The tasks
are those maml.test samples from the same labels and seed (fewshot.episodes.sample_tasks), so the two results
compare task by task. Writes OUT/config.json and OUT/results/{split}_{ways}w{shots}s.json, as maml.test does.
"""

import time
from pathlib import Path

import numpy as np

from fewshot.cli import make_parser, positive_int, seed_int
from fewshot.data import load_split
from fewshot.episodes import Task, sample_tasks, tasks_sha256
from fewshot.errors import cli_main
from fewshot.io import provenance, save_json
from fewshot.metrics import CI95_METHOD, format_accuracy, mean_ci95
from fewshot.report import result_name

METHOD = "raw pixels, nearest prototype (no training)"


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
    return p


def nearest_prototype_accuracy(features: np.ndarray, task: Task) -> float:
    """Query accuracy of one task. features: N x D, the rows task.support and task.query index."""
    support, query = features[task.support], features[task.query]  # (ways*shots) x D, (ways*queries) x D
    ways = len(task.classes)
    prototypes = np.stack([support[task.support_y == w].mean(0) for w in range(ways)])  # ways x D
    d = ((query[:, None, :] - prototypes[None]) ** 2).sum(-1)  # queries x ways
    return float((d.argmin(1) == task.query_y).mean())


def main(argv=None):
    args = get_parser().parse_args(argv)
    split = load_split(args.cache)
    features = split.X.reshape(len(split.X), -1).astype(np.float32) / 255.0  # N x (H*W*C)
    out = Path(args.out)
    # every setting's tasks are drawn before anything is written, so a split too small for one leaves no folder
    tasks_of = {shots: sample_tasks(split.labels, args.ways, shots, args.queries, args.tasks, args.seed)
                for shots in args.shots}
    save_json(out / "config.json", {**vars(args), "method": METHOD, **provenance()})
    for shots, tasks in tasks_of.items():
        t0 = time.time()
        accs = [nearest_prototype_accuracy(features, t) for t in tasks]
        mean, ci = mean_ci95(accs)
        path = out / "results" / result_name(args.split, args.ways, shots)
        save_json(path, {"method": METHOD, "split": args.split, "cache": args.cache, "seed": args.seed,
                         "tasks": len(tasks), "tasks_sha256": tasks_sha256(tasks), "ways": args.ways,
                         "shots": shots, "queries": args.queries, "steps": 0, "accuracy": mean, "ci95": ci,
                         "ci95_method": CI95_METHOD, "seconds": round(time.time() - t0, 1),
                         "per_task_accuracy": accs, **provenance()})
        print(f"{METHOD}: {args.ways}-way {shots}-shot {format_accuracy(mean, ci)} over {len(tasks)} "
              f"{args.split} tasks -> {path}")


if __name__ == "__main__":
    cli_main(main)
