"""Speed of EP's test (label propagation over support, query and unlabelled images) in tasks per second.

    python bench/ep_test.py                        # 5-way 1-shot, 15 queries, 0 and 100 unlabelled images per way
    python bench/ep_test.py --unlabeled 0 100 --batch 1 16 --tasks 64

Three ways of evaluating the same tasks with the same (untrained) conv4 in eval mode, their tasks interleaved so
that a slowdown of the machine hits all alike: `upstream` re-states upstream EP's test one task at a time
(torch.inverse of I - alpha S, then the row-normalised propagator times the labels, as its
embedding_propagation.py), `ours-1` is ep.test's code one task at a time (linear solves), `ours-N` evaluates N
tasks together (one backbone pass and batched solves). Reports the median tasks/s of each and its ratio to
upstream's, and checks that all three predict the same labels.
"""

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from ep.loop import evaluate_tasks
from ep.model import EPNet
from fewshot.cli import THREADS_HELP, HelpFormatter, nonneg_int, positive_int
from fewshot.episodes import add_unlabeled, sample_tasks
from fewshot.errors import cli_main
from fewshot.evaluation import task_tensors
from fewshot.runtime import set_threads


def upstream_propagator(z, alpha, normalise):
    """Upstream's global_consistency on one task's embeddings z (n x c): an explicit inverse."""
    n, c = z.shape
    d = ((z[:, None] - z[None]) ** 2).sum(-1) / np.sqrt(c)
    d = d / d[d != 0].std()
    a = torch.exp(-d) * (1 - torch.eye(n))
    isqrt = 1 / torch.sqrt(1e-4 + a.sum(-1))
    p = torch.inverse(torch.eye(n) - alpha * a * isqrt[None] * isqrt[:, None])
    return F.normalize(p, p=1, dim=-1) if normalise else p


@torch.no_grad()
def upstream_accuracy(model, X, task) -> float:
    xs, ys, xq, yq = task_tensors(X, task, "cpu")
    xu = X[torch.from_numpy(task.unlabeled)].permute(0, 3, 1, 2).float() / 255
    z = model(torch.cat([xs, xq, xu.contiguous(memory_format=torch.channels_last)]))
    z = upstream_propagator(z, 0.5, False) @ z
    y = torch.zeros(len(z), len(task.classes))
    y[torch.arange(len(ys)), ys] = 1
    scores = upstream_propagator(z, 0.2, True) @ y
    return (scores[len(xs):len(xs) + len(xq)].argmax(-1) == yq).float().mean().item()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python bench/ep_test.py", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--unlabeled", type=nonneg_int, nargs="+", default=[0, 100], help="unlabelled images per way")
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1, 16], help="tasks evaluated together")
    p.add_argument("--tasks", type=positive_int, default=48, help="tasks timed per setting")
    p.add_argument("--shots", type=positive_int, default=1)
    p.add_argument("--queries", type=positive_int, default=15)
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    args = p.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    model = EPNet("conv4", 1, 64, 28, 10).eval()
    per_class = args.shots + args.queries + max(args.unlabeled)
    labels = np.repeat(np.arange(20), per_class)
    X = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (len(labels), 28, 28, 1), dtype=np.uint8))
    rows = []
    for u in args.unlabeled:
        tasks = sample_tasks(labels, 5, args.shots, args.queries, args.tasks, seed=0)
        tasks = add_unlabeled(tasks, labels, u, 0, seed=0) if u else tasks
        ways = {"upstream": lambda ts: [upstream_accuracy(model, X, t) for t in ts]}
        ways.update({f"ours-{b}": (lambda b: lambda ts: evaluate_tasks(model, X, ts, "cpu"))(b) for b in args.batch})
        seconds, accs = {k: [] for k in ways}, {k: [] for k in ways}
        step = max(args.batch)
        for i in range(0, len(tasks), step):  # interleaved, `step` tasks at a time
            for name, fn in ways.items():
                b = int(name.split("-")[1]) if name != "upstream" else 1
                t0 = time.perf_counter()
                for j in range(i, min(i + step, len(tasks)), b):
                    accs[name] += fn(tasks[j:j + b])
                seconds[name].append((time.perf_counter() - t0) / len(tasks[i:i + step]))
        for name in ways:
            assert np.allclose(accs[name], accs["upstream"]), f"{name} predicts otherwise than upstream"
        base = 1 / statistics.median(seconds["upstream"])
        for name in ways:
            rate = 1 / statistics.median(seconds[name])
            rows.append(dict(unlabeled=u, method=name, tasks_per_s=round(rate, 1), ratio=round(rate / base, 2)))
    print(json.dumps({"machine": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "shots": args.shots, "queries": args.queries, "rows": rows}, indent=1))
    print("| unlabelled per way | method | tasks/s | ratio to upstream |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['unlabeled']} | {r['method']} | {r['tasks_per_s']} | {r['ratio']} |")


if __name__ == "__main__":
    cli_main(main)
