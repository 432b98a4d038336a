"""Speed of one cfe.train step (batch 256, augmentation included) against this machine's fp32 matmul peak.

    python bench/cfe_step.py                      # cfe.train's defaults: Conv4, 28x28 grey, queue 16384, 4 splits
    python bench/cfe_step.py --queue-size 16384 65536
    python bench/cfe_step.py --bn-splits 1 4      # one BatchNorm and loss over the batch vs 4 splits + key shuffle
    python bench/cfe_step.py --image-size 84 --channels 3 --backbone conv4 resnet18   # mini-ImageNet's images
    python bench/cfe_step.py --device cuda        # on a GPU, against its fp32 matmul peak

The step is cfe.train's: a CFE model built as cfe.train builds it (its default widths, MLP head, --backbone), random
uint8 images of --image-size x --image-size x --channels, and cfe.train's views of them (Omniglot's augmentation for
1 channel, MoCo v2's colour augmentation, cfe.colour, for 3).

Every setting given (each --backbone x --queue-size x --bn-splits) is measured in the same process on the same
cores, their steps interleaved so that any slowdown of the machine hits all of them alike, and each is reported as
its median step time, its images per second, its ratio to the first setting, and its share of the matmul peak (the
step's achieved FLOP rate over a 4096x4096 fp32 matmul's; --peak-size sets that side). FLOPs are counted by
torch's FlopCounterMode (convolutions, matmuls; elementwise ops are not counted, so the share is a lower bound).
"""

import argparse
import itertools
import json
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

from cfe.train import build_with_defaults, check_step_settings, train_step
from fewshot.backbones import BACKBONES, check_image_side
from fewshot.cli import THREADS_HELP, HelpFormatter, nonneg_int, positive_int
from fewshot.errors import cli_main
from fewshot.runtime import pick_device, set_threads
from fewshot.timing import device_name, matmul_gflops, timed

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_step(device, batch_size, image_size, channels, compile_, backbone, queue_size, bn_splits, precision):
    """A closure running one training step of a fresh CFE model with this setting (seeded, so repeatable)."""
    torch.manual_seed(0)
    model, opt, _ = build_with_defaults((image_size, image_size, channels), device, queue_size=queue_size,
                                        bn_splits=bn_splits, backbone=backbone)
    if compile_:  # as cfe.train --compile
        model.encoder_q.compile()
        model.encoder_k.compile()
    images = torch.randint(0, 256, (batch_size, image_size, image_size, channels), dtype=torch.uint8, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    return lambda: train_step(model, opt, images, gen, precision)


def get_parser():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per step")
    p.add_argument("--image-size", type=positive_int, default=28, help="side of the square images, in pixels")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1,
                   help="1: grey, Omniglot's augmentation; 3: RGB, MoCo v2's colour augmentation")
    p.add_argument("--backbone", choices=BACKBONES, nargs="+", default=["conv4"],
                   help="encoder networks to time (cfe.train's --backbone)")
    p.add_argument("--queue-size", type=positive_int, nargs="+", default=[16384], help="queue lengths to time")
    p.add_argument("--bn-splits", type=positive_int, nargs="+", default=[4], help="BatchNorm and loss splits to time")
    p.add_argument("--precision", choices=("fp32", "bf16"), nargs="+", default=["fp32"],
                   help="cfe.train's --precision values to time (bf16: the GPU fast path)")
    p.add_argument("--compile", action="store_true", help="as cfe.train --compile, for every setting")
    p.add_argument("--steps", type=positive_int, default=20, help="timed steps per setting")
    p.add_argument("--peak-size", type=positive_int, default=4096,
                   help="side of the square fp32 matmul that measures the peak (smaller: quicker, a lower peak)")
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (the matmul peak is measured there too)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    settings = list(itertools.product(args.backbone, args.queue_size, args.bn_splits, args.precision))
    for _, q, s, _ in settings:
        check_step_settings(args.batch_size, q, s)
    check_image_side(args.image_size, "--image-size")  # as cfe.train checks its images, whatever the backbone
    set_threads(args.threads)
    device = pick_device(args.device)
    steps = [make_step(device, args.batch_size, args.image_size, args.channels, args.compile, *setting)
             for setting in settings]
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
    # each setting against the matmul peak of its own precision
    peaks = {p: matmul_gflops(device, args.peak_size, dtype=DTYPES[p]) for p in dict.fromkeys(args.precision)}
    medians = [statistics.median(ts) for ts in times]
    rows = [{"backbone": b, "queue_size": q, "bn_splits": s, "precision": p,
             "step_seconds_median": round(sec, 4), "step_seconds_min": round(min(ts), 4),
             "images_per_s": round(args.batch_size / sec, 1), "ratio_to_first": round(sec / medians[0], 3),
             "step_gflop": round(f / 1e9, 2), "step_gflops_per_s": round(f / sec / 1e9, 1),
             "share_of_matmul_peak": round(f / sec / 1e9 / peaks[p], 3)}
            for (b, q, s, p), sec, ts, f in zip(settings, medians, times, flops)]
    print(json.dumps({"settings": rows, "matmul_gflops_per_s": {p: round(v, 1) for p, v in peaks.items()},
                      "matmul_size": args.peak_size, "compile": args.compile,
                      "batch_size": args.batch_size,
                      "image_size": args.image_size, "channels": args.channels,
                      "steps": args.steps, "threads": torch.get_num_threads(), "torch": str(torch.__version__),
                      "device": str(device), "machine": device_name(device)}, indent=2))


if __name__ == "__main__":
    cli_main(main)
