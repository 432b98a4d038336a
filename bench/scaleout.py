"""Images per second of cfe.train in one process against N processes under torchrun, on the same cores.

    python bench/scaleout.py --data data/omniglot/omniglot_cache_train.npz --procs 2 --threads 2
    python bench/scaleout.py --data ... --procs 4 --device cuda --threads 8     # one process on 1 GPU vs 4 GPUs

Each launch trains --epochs epochs of the same run (same seed, global batch and --bn-splits, so the same model up
to float rounding) into a fresh folder; the one-process and N-process launches alternate --repeats times, so that
any slowdown of the machine hits both alike. On CPUs the cores are shared out: one process with --threads threads
against N processes with --threads / N each. Reported: the median over repeats of the epochs' images per second
(the run's own metrics.jsonl timing, start-up excluded) and the N-process run's ratio to the one-process run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from fewshot.cli import HelpFormatter, positive_int
from fewshot.data import load_images
from fewshot.errors import UserError, cli_main
from fewshot.io import provenance, read_jsonl


def get_parser():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, help="train images (.npz), as cfe.train --data")
    p.add_argument("--procs", type=positive_int, default=2, help="processes of the torchrun launch")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads of the one-process launch, shared "
                   "out among the N processes")
    p.add_argument("--epochs", type=positive_int, default=2, help="epochs per launch")
    p.add_argument("--repeats", type=positive_int, default=3, help="launches of each kind, alternating")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: one GPU per process)")
    p.add_argument("--train-args", default="", help="more cfe.train options, e.g. '--batch-size 256'")
    return p


def launch(args, procs: int, out: Path) -> float:
    """Images per second of one cfe.train launch (its epochs' median)."""
    threads = max(1, args.threads // procs)
    stage = ["-m", "cfe.train", "--data", args.data, "--out", str(out), "--epochs", str(args.epochs),
             "--device", args.device, "--threads", str(threads), *args.train_args.split()]
    runner = [sys.executable] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([*runner, *stage], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise UserError(f"cfe.train ({procs} processes) failed: {r.stderr.strip().splitlines()[-1:]}")
    images = int(json.loads((out / "config.json").read_text())["batch_size"]) * steps_per_epoch(args, out)
    return statistics.median(images / row["seconds"] for row in read_jsonl(out / "metrics.jsonl"))


def steps_per_epoch(args, out: Path) -> int:
    return len(load_images(args.data)) // int(json.loads((out / "config.json").read_text())["batch_size"])


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.procs < 2:
        raise UserError("--procs must be at least 2: the torchrun launch is compared with one process")
    rates = {1: [], args.procs: []}
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        for i in range(args.repeats):
            for procs in rates:
                rates[procs].append(launch(args, procs, Path(tmp) / f"{procs}-{i}"))
    one, many = (float(np.median(rates[p])) for p in rates)
    print(json.dumps({"images_per_s": {"1 process": round(one, 1), f"{args.procs} processes": round(many, 1)},
                      "ratio": round(many / one, 3), "all_images_per_s": {str(k): v for k, v in rates.items()},
                      "threads": args.threads, "epochs": args.epochs, "repeats": args.repeats,
                      "device": args.device, "train_args": args.train_args, "data": args.data, **provenance()},
                     indent=2))


if __name__ == "__main__":
    cli_main(main)
