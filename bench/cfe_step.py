"""Speed of one cfe.train step (batch 256, augmentation included) against this machine's fp32 matmul peak.

    python bench/cfe_step.py                      # cfe.train's defaults: Conv4, 28x28 grey, queue 16384, 4 splits
    python bench/cfe_step.py --queue-size 16384 65536
    python bench/cfe_step.py --bn-splits 1 4      # one BatchNorm and loss over the batch vs 4 splits + key shuffle
    python bench/cfe_step.py --device cuda        # on a GPU, against its fp32 matmul peak

Every setting given (each --queue-size x --bn-splits) is measured in the same process on the same cores, their
steps interleaved so that any slowdown of the machine hits all of them alike, and each is reported as its median
step time, its ratio to the first setting, and its share of the matmul peak (the step's achieved FLOP rate over a
4096x4096 fp32 matmul's). FLOPs are counted by torch's FlopCounterMode (convolutions, matmuls; elementwise ops are
not counted, so the share is a lower bound).
"""

import argparse
import itertools
import json
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from cfe.model import CFE
from cfe.train import check_step_settings, train_step
from fewshot.cli import THREADS_HELP, HelpFormatter, nonneg_int, positive_int
from fewshot.errors import cli_main
from fewshot.runtime import pick_device, set_threads


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def timed(fn, device) -> float:
    """Seconds one call of fn takes, waiting for a GPU's queued kernels to finish."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def matmul_gflops(device, n=4096, repeats=5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    return 2 * n**3 / min(timed(lambda: a @ b, device) for _ in range(repeats)) / 1e9


def make_step(device, batch_size, queue_size, bn_splits):
    """A closure running one training step of a fresh CFE model with this setting (seeded, so repeatable)."""
    torch.manual_seed(0)
    model = CFE(queue_size=queue_size, bn_splits=bn_splits)
    model = model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.encoder_q.parameters(), 0.03, momentum=0.9, weight_decay=1e-4)
    images = torch.randint(0, 256, (batch_size, 28, 28, 1), dtype=torch.uint8, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    return lambda: train_step(model, opt, images, gen)


def get_parser():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per step")
    p.add_argument("--queue-size", type=positive_int, nargs="+", default=[16384], help="queue lengths to time")
    p.add_argument("--bn-splits", type=positive_int, nargs="+", default=[4], help="BatchNorm and loss splits to time")
    p.add_argument("--steps", type=positive_int, default=20, help="timed steps per setting")
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (the matmul peak is measured there too)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    settings = list(itertools.product(args.queue_size, args.bn_splits))
    for q, s in settings:
        check_step_settings(args.batch_size, q, s)
    set_threads(args.threads)
    device = pick_device(args.device)
    steps = [make_step(device, args.batch_size, *setting) for setting in settings]
    flops = []
    for step in steps:
        for _ in range(3):  # warm-up (allocator, oneDNN primitive caches)
            step()
        with FlopCounterMode(display=False) as counter:
            step()
        flops.append(counter.get_total_flops())
    times = [[] for _ in steps]
    for _ in range(args.steps):
        for step, ts in zip(steps, times):
            ts.append(timed(step, device))
    peak = matmul_gflops(device)
    medians = [statistics.median(ts) for ts in times]
    rows = [{"queue_size": q, "bn_splits": s,
             "step_seconds_median": round(sec, 4), "step_seconds_min": round(min(ts), 4),
             "ratio_to_first": round(sec / medians[0], 3),
             "step_gflop": round(f / 1e9, 2), "step_gflops_per_s": round(f / sec / 1e9, 1),
             "share_of_matmul_peak": round(f / sec / 1e9 / peak, 3)}
            for (q, s), sec, ts, f in zip(settings, medians, times, flops)]
    print(json.dumps({"settings": rows, "matmul_gflops_per_s": round(peak, 1), "batch_size": args.batch_size,
                      "steps": args.steps, "threads": torch.get_num_threads(), "torch": str(torch.__version__),
                      "device": str(device), "machine": device_name(device)}, indent=2))


if __name__ == "__main__":
    cli_main(main)
