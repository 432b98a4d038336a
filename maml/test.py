"""Meta-test a MAML run: mean accuracy and 95% CI over N-way K-shot tasks of the test split.

    python -m maml.test --run runs/omniglot/maml --shots 1
    python -m maml.test --run runs/omniglot/maml --shots 5 --save-episodes episodes_5shot.json
    python -m maml.test --run runs/omniglot/maml --episodes episodes_5shot.json

Reads the training run's config.json (architecture, inner step size, caches) and its best checkpoint. Writes
results/test_{ways}w{shots}s.json into the run folder (or --output) and prints the result.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from fewshot.checkpoint import load_checkpoint, load_state
from fewshot.data import load_split
from fewshot.datasets import image_file_loader
from fewshot.episodes import EpisodeSampler, load_episodes, save_episodes
from fewshot.errors import UserError, cli_main
from fewshot.io import load_json, provenance, save_json
from fewshot.metrics import mean_ci95
from fewshot.runtime import epoch_seed, pick_device, set_threads
from maml.common import evaluate
from maml.maml import MAMLNet


def get_parser():
    p = argparse.ArgumentParser(prog="python -m maml.test", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="maml.train run folder (holds config.json and checkpoints/)")
    p.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint path")
    p.add_argument("--cache", help="labelled split to test on; default: the test cache beside the train cache")
    p.add_argument("--dataset", help="dataset name, to read image files named in --episodes (e.g. omniglot)")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, help="query images per way (default: the training run's)")
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50, help="adaptation steps")
    p.add_argument("--inner-lr", type=float, help="adaptation step size (default: the training run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-episodes", help="write the sampled tasks to this JSON file")
    p.add_argument("--episodes", help="evaluate the tasks of this JSON file instead of sampling")
    p.add_argument("--output", help="results JSON (default: RUN/results/test_{ways}w{shots}s.json)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    prov = provenance()  # the code as it starts: a commit made during a long test must not relabel its results
    set_threads(args.threads)
    device = pick_device(args.device)
    run = Path(args.run)
    cfg = load_json(run / "config.json")
    ckpt_path = run / "checkpoints" / f"{args.checkpoint}.pt" if args.checkpoint in ("best", "last") \
        else Path(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path, "maml")
    arch = dict(ckpt["arch"])
    if args.ways != arch["n_way"]:
        # MAML's head has one output per way; a different N needs a head of that size, freshly zeroed
        # (zero init, as in "MAML with zero-initialised heads", keeps the adapted model label-symmetric).
        arch["n_way"] = args.ways
    model = MAMLNet(**arch).to(device)
    state = dict(ckpt["model"])
    if args.ways != ckpt["arch"]["n_way"]:
        state["classifier.weight"] = torch.zeros_like(model.classifier.weight)
        state["classifier.bias"] = torch.zeros_like(model.classifier.bias)
    load_state(model, state, ckpt_path)

    cache = args.cache or cfg["train_cache"].replace("_train.npz", "_test.npz")
    split = load_split(cache)
    want = (arch["image_size"], arch["image_size"], arch["in_channels"])
    if split.X.shape[1:] != want:
        raise UserError(f"{cache}: images are {split.X.shape[1:]}, the model expects {want}")
    queries = args.queries if args.queries is not None else cfg["queries"]
    inner_lr = args.inner_lr if args.inner_lr is not None else cfg["inner_lr"]
    if args.episodes and args.save_episodes:
        raise UserError("--save-episodes writes sampled tasks; it cannot be combined with --episodes")
    X = split.X
    if args.episodes:
        loader = image_file_loader(args.dataset or cfg.get("dataset"), want) if args.dataset or cfg.get("dataset") \
            else None
        tasks, extra = load_episodes(args.episodes, len(X), loader)
        if extra:
            X = np.concatenate([X, np.stack(extra)])
        for t in tasks:
            if len(np.unique(t.support_y)) != args.ways and len(np.unique(t.support_y)) != arch["n_way"]:
                raise UserError(f"{args.episodes}: tasks are {len(np.unique(t.support_y))}-way; pass --ways")
        source = str(args.episodes)
    else:
        sampler = EpisodeSampler(split.labels, args.ways, args.shots, queries)
        rng = np.random.default_rng(epoch_seed(args.seed, 0, stream=11))
        tasks = [sampler.sample(rng) for _ in range(args.tasks)]
        source = f"{args.tasks} tasks sampled with seed {args.seed}"
    if args.save_episodes:
        save_episodes(args.save_episodes, tasks, cache, {"ways": args.ways, "shots": args.shots, "queries": queries,
                                                          "seed": args.seed})
    t0 = time.time()
    accs = evaluate(model, torch.from_numpy(X), tasks, args.steps, inner_lr, device,
                    f"test {args.ways}-way {args.shots}-shot")
    mean, ci = mean_ci95(accs)
    result = {"accuracy": mean, "ci95": ci, "tasks": len(tasks), "ways": args.ways, "shots": args.shots,
              "queries": queries, "steps": args.steps, "inner_lr": inner_lr, "episodes": source, "cache": cache,
              "checkpoint": str(ckpt_path), "checkpoint_epoch": ckpt["epoch"], "model_selection": ckpt["selection"],
              "seconds": round(time.time() - t0, 1), "per_task_accuracy": accs, **prov}
    out = Path(args.output) if args.output else run / "results" / f"test_{args.ways}w{args.shots}s.json"
    save_json(out, result)
    print(f"{args.ways}-way {args.shots}-shot: {100 * mean:.2f} ± {100 * ci:.2f} % over {len(tasks)} tasks "
          f"({args.steps} steps; {ckpt['selection']}, epoch {ckpt['epoch']}) -> {out}")


if __name__ == "__main__":
    cli_main(main)
