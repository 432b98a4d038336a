"""Speed of MAML's meta-test (maml.test: adapt on the support set, predict the queries) against its FLOP floor.

    python bench/meta_test.py                          # 5-way 1- and 5-shot, 15 queries, 50 steps (upstream's test)
    python bench/meta_test.py --shots 5 --vmap 8       # and 8 tasks at a time under torch.func.vmap
    python bench/meta_test.py --device cuda --vmap 32

`loop` is maml.test's code: `maml.maml.evaluate_task`, one task after the other, batch statistics per task.
`vmap-N` adapts N tasks together: `torch.func.vmap` over the tasks of `torch.func.grad` of the support loss, each
task's batch statistics its own (no meta-gradient is needed at test, so the reason MAML's training loops over
tasks does not apply). Both run on the same tasks of random images with the same (untrained) MAMLNet, their tasks
interleaved so that a slowdown of the machine hits all alike; `vmap` reports how far its query predictions agree
with the loop's.

The FLOP floor of a task is its FLOPs (torch's FlopCounterMode: convolutions and matmuls, the adaptation steps and
the query pass) at this machine's fp32 matmul rate (fewshot.timing.matmul_gflops); `floor_ratio` is the measured
time over that floor, and `test_minutes` the projected time of a 1,000-task test.
"""

import argparse
import functools
import json
import statistics

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from torch.utils.flop_counter import FlopCounterMode

from fewshot.cli import THREADS_HELP, HelpFormatter, nonneg_int, positive_float, positive_int
from fewshot.episodes import sample_tasks
from fewshot.errors import cli_main
from fewshot.evaluation import stacked_task_tensors, task_tensors
from fewshot.runtime import pick_device, set_threads
from fewshot.timing import device_name, matmul_gflops, timed
from maml.maml import MAMLNet, evaluate_task


def evaluate_vmap(model, xs, ys, xq, steps: int, lr: float) -> torch.Tensor:
    """Query logits (T x Q x ways) of T tasks adapted together: xs T x S x C x H x W, ys T x S, xq T x Q x C x H x W."""
    params = {n: p.detach().expand(len(xs), *p.shape) for n, p in model.named_parameters()}

    def support_loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    step_grads = vmap(grad(support_loss))
    for _ in range(steps):
        g = step_grads(params, xs, ys)
        params = {n: p - lr * g[n] for n, p in params.items()}
    return vmap(lambda p, x: functional_call(model, p, (x,)))(params, xq)


def query_logits(model, X, tasks, steps, lr, device, batched: bool) -> list:
    """Each task's query logits: maml.test's evaluate_task one task at a time, or evaluate_vmap of all together."""
    if not batched:
        return [evaluate_task(model, *task_tensors(X, t, device), steps, lr)[1] for t in tasks]
    xs, ys, xq, _ = stacked_task_tensors(X, tasks, device)
    return list(evaluate_vmap(model, xs, ys, xq, steps, lr).detach())


def task_gflop(model, X, task, steps, lr, device) -> float:
    with FlopCounterMode(display=False) as counter:
        evaluate_task(model, *task_tensors(X, task, device), steps, lr)
    return counter.get_total_flops() / 1e9


def get_parser():
    p = argparse.ArgumentParser(prog="python bench/meta_test.py", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--shots", type=positive_int, nargs="+", default=[1, 5], help="5-way K-shot settings to time")
    p.add_argument("--queries", type=positive_int, default=15, help="queries per way (maml.test's default)")
    p.add_argument("--steps", type=positive_int, default=50, help="adaptation steps (upstream's test: 50)")
    p.add_argument("--inner-lr", type=positive_float, default=0.1, help="adaptation step size (upstream's 0.1)")
    p.add_argument("--vmap", type=positive_int, nargs="*", default=[], help="also time N tasks at a time under vmap")
    p.add_argument("--tasks", type=positive_int, default=8, help="tasks timed per setting")
    p.add_argument("--peak-size", type=positive_int, default=4096, help="side of the matmul that measures the peak")
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    set_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = MAMLNet().to(device)
    per_class = max(args.shots) + args.queries
    labels = np.repeat(np.arange(20), per_class)
    X = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (len(labels), 28, 28, 1), dtype=np.uint8))
    peak = matmul_gflops(device, args.peak_size)
    rows = []
    for shots in args.shots:
        tasks = sample_tasks(labels, 5, shots, args.queries, args.tasks, seed=0)
        gflop = task_gflop(model, X, tasks[0], args.steps, args.inner_lr, device)
        methods = {"loop": 1, **{f"vmap-{b}": b for b in args.vmap}}
        seconds, logits = {m: [] for m in methods}, {m: [] for m in methods}
        chunk = max(methods.values())
        for i in range(0, len(tasks), chunk):  # interleaved, `chunk` tasks at a time
            for name, b in methods.items():
                for j in range(i, min(i + chunk, len(tasks)), b):
                    part, out = tasks[j:j + b], []
                    fn = functools.partial(query_logits, model, X, part, args.steps, args.inner_lr, device,
                                           batched=name != "loop")
                    sec = timed(lambda f=fn, o=out: o.extend(f()), device)
                    seconds[name].append(sec / len(part))
                    logits[name] += [o.cpu() for o in out]
        for name in methods:
            sec = statistics.median(seconds[name])
            agree = torch.cat(logits[name]).argmax(-1).eq(torch.cat(logits["loop"]).argmax(-1)).float().mean()
            rows.append(dict(shots=shots, method=name, seconds_per_task=round(sec, 4), tasks_per_s=round(1 / sec, 2),
                             test_minutes=round(1000 * sec / 60, 1), gflop_per_task=round(gflop, 2),
                             share_of_matmul_peak=round(gflop / sec / peak, 3),
                             floor_ratio=round(sec / (gflop / peak), 2),
                             ratio_to_loop=round(statistics.median(seconds["loop"]) / sec, 2),
                             predictions_agree_with_loop=round(agree.item(), 4)))
    print(json.dumps({"rows": rows, "matmul_gflops_per_s": round(peak, 1), "steps": args.steps,
                      "queries": args.queries, "inner_lr": args.inner_lr, "tasks": args.tasks,
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device),
                      "machine": device_name(device)}, indent=1))


if __name__ == "__main__":
    cli_main(main)
