"""Speed of one cfe.train step (batch 256, augmentation included) against this machine's fp32 matmul peak.

    python bench/cfe_step.py                 # Omniglot recipe: Conv4, 28x28 grey, queue 16384
    python bench/cfe_step.py --queue-size 65536 --steps 20
    python bench/cfe_step.py --bn-splits 4   # BatchNorm in 4 groups + key shuffle (CFE_BN_SPLITS=4)

Both are measured in the same process on the same cores, so the ratio (the step's achieved FLOP rate over the
matmul rate) is comparable across machines. The step's FLOPs are counted by torch's FlopCounterMode
(convolutions, matmuls; elementwise ops are not counted, so the share is a lower bound).
"""

import argparse
import json
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from cfe.augment import omniglot_augment
from cfe.model import CFE
from cfe.train import train_step


def matmul_gflops(n=4096, repeats=5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--queue-size", type=int, default=16384)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--bn-splits", type=int, default=1)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CFE(queue_size=args.queue_size, bn_splits=args.bn_splits).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.encoder_q.parameters(), 0.03, momentum=0.9, weight_decay=1e-4)
    images = torch.randint(0, 256, (args.batch_size, 28, 28, 1), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)

    def step():
        return train_step(model, opt, images, gen, omniglot_augment)

    for _ in range(3):  # warm-up (allocator, oneDNN primitive caches)
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    peak = matmul_gflops()
    result = {"step_seconds_median": round(sec, 4), "step_seconds_min": round(min(times), 4),
              "step_gflop": round(flops / 1e9, 2), "step_gflops_per_s": round(flops / sec / 1e9, 1),
              "matmul_gflops_per_s": round(peak, 1), "share_of_matmul_peak": round(flops / sec / 1e9 / peak, 3),
              "batch_size": args.batch_size, "queue_size": args.queue_size,
              "bn_splits": args.bn_splits, "threads": torch.get_num_threads(),
              "torch": str(torch.__version__), "machine": platform.processor() or platform.machine()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
