"""Meta-test a MAML run: mean accuracy and 95% CI over N-way K-shot tasks of its test (or val) split.

    python -m maml.test --run runs/omniglot/maml --shots 1
    python -m maml.test --run runs/omniglot/maml --shots 1 --split val     # every setting is chosen on val
    python -m maml.test --run runs/omniglot/maml --shots 5 --save-episodes episodes_5shot.json
    python -m maml.test --run runs/omniglot/maml --episodes episodes_5shot.json

Reads the training run's config.json (architecture, inner step size, its test and val caches) and its best
checkpoint. Writes results/{split}_{ways}w{shots}s.json into the run folder (or --output) and prints the result;
tasks from another cache (split "other" unless --split names it) or an episodes file, and other checkpoints
(`--checkpoint last`, a snapshot epoch_NNNN.pt, or `best@N`: the model the run would have selected had it
meta-trained N epochs), add their names (results/{split}_{ways}w{shots}s_{cache}_{checkpoint}.json), so they
never replace the run's own result.
An existing result file is replaced only by a test with the same settings (caches with one file name share a
result name: pass --output for the other). With --episodes, ways and shots are the file's, and a file saved with
--save-episodes must be evaluated on the split it was drawn from. A test cache that is the run's train cache, or
shares classes (true labels) with it, is refused unless --allow-seen-classes.
A killed test resumes: the accuracies of the tasks done so far are kept in {output}.partial.json, and the same
command continues after the last of them (the tasks are drawn deterministically, so the result is the same).
"""

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fewshot.cli import DEVICE_HELP, THREADS_HELP, make_parser, nonneg_int, positive_float, positive_int, seed_int
from fewshot.data import load_split
from fewshot.datasets import image_file_loader
from fewshot.episodes import load_episodes, sample_tasks, save_episodes, tasks_sha256
from fewshot.errors import UserError, cli_main
from fewshot.io import file_sha256, load_json, provenance, save_json
from fewshot.metrics import CI95_METHOD, mean_ci95
from fewshot.report import result_name
from fewshot.runtime import pick_device, set_threads
from maml.checks import check_output, comparable, recorded_path, training_classes_in
from maml.common import task_tensors
from maml.maml import evaluate_task
from maml.selection import build_model, checked_arch, pick_checkpoint

SPLITS = ("test", "val")
PARTIAL_EVERY, PARTIAL_SECONDS = 50, 30  # the partial file is rewritten after this many tasks or seconds


def get_parser():
    p = make_parser("python -m maml.test", __doc__)
    p.add_argument("--run", required=True, help="maml.train run folder (holds config.json and checkpoints/)")
    p.add_argument("--checkpoint", default="best",
                   help="best (the run's selection), last, a checkpoint path such as RUN/checkpoints/epoch_0040.pt, "
                        "or best@N: the snapshot a run of N epochs would have selected (runs trained with "
                        "--save-every 1)")
    data = p.add_argument_group("tasks")
    data.add_argument("--split", choices=SPLITS,
                      help="the run's cache to test on: test (default) or val; with --cache or --episodes, the "
                           "split they hold (if not given: the run's split whose cache it is, else 'other')")
    data.add_argument("--cache", help="labelled cache to test on instead of the run's own")
    data.add_argument("--ways", type=positive_int, help="ways per task (default: 5; with --episodes, the file's)")
    data.add_argument("--shots", type=positive_int,
                      help="support images per way (default: 1; with --episodes, the file's)")
    data.add_argument("--queries", type=positive_int, help="query images per way (default: the training run's)")
    data.add_argument("--tasks", type=positive_int, default=1000, help="tasks to sample")
    data.add_argument("--seed", type=seed_int, default=0, help="seed of the sampled tasks (0 .. 2**31 - 1)")
    data.add_argument("--allow-seen-classes", action="store_true",
                      help="test on a cache that shares classes with the run's train cache (their labels were "
                           "never read in training), as upstream's protocol does; the result records how many")
    data.add_argument("--save-episodes", help="write the sampled tasks to this JSON file")
    data.add_argument("--episodes", help="evaluate the tasks of this JSON file instead of sampling (image files it "
                                         "names by a relative path are found from its folder)")
    data.add_argument("--dataset", help="dataset name, to read image files named in --episodes (default: the "
                                        "run's, from encode.json)")
    p.add_argument("--steps", type=positive_int, default=50, help="adaptation steps")
    p.add_argument("--inner-lr", type=positive_float, help="adaptation step size (default: the training run's)")
    p.add_argument("--output", help="results JSON (default: RUN/results/{split}_{ways}w{shots}s.json, with _NAME "
                                    "added for another --cache or --episodes file NAME.json and for a checkpoint "
                                    "other than best)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    return p


def pick_cache(args, run: Path, cfg: dict) -> tuple[str, str, bool]:
    """(cache, split name, whether it is the run's own cache of that split): --cache, or the run's --split cache
    as config.json records it."""
    own = {s: recorded_path(run, cfg, cfg[f"{s}_cache"]) for s in SPLITS if cfg.get(f"{s}_cache")}
    if args.cache:
        same = [s for s, path in own.items() if Path(path).resolve() == Path(args.cache).resolve()]
        split = args.split or (same[0] if same else "other")
        return args.cache, split, split in same
    split = args.split or "test"
    if split not in own:
        raise UserError(f"{run}: the run has no {split} cache (its config.json names none); pass --cache")
    return own[split], split, True


def episode_shape(tasks, path) -> tuple[int, int, int | None]:
    """(ways, shots, queries per way) of an episodes file's tasks; queries is None when it varies."""
    ways = {len(t.classes) for t in tasks}
    shots = {c for t in tasks for c in np.bincount(t.support_y)}
    queries = {c for t in tasks for c in np.bincount(t.query_y, minlength=len(t.classes))}
    if len(ways) != 1 or len(shots) != 1:
        raise UserError(f"{path}: tasks must share one number of ways and of support images per way, found "
                        f"{sorted(ways)} ways and {sorted(shots)} shots; split the file by setting")
    return ways.pop(), int(shots.pop()), int(queries.pop()) if len(queries) == 1 else None


def pick_tasks(args, split, cache: str, dataset, image_shape, queries: int) -> tuple:
    """(tasks, images, ways, shots, queries, source): the tasks of --episodes (image files it names are appended
    to the images) or `--tasks` sampled from the split (as the baselines sample them for the same seed)."""
    if not args.episodes:
        ways, shots = args.ways or 5, args.shots or 1
        tasks = sample_tasks(split.labels, ways, shots, queries, args.tasks, args.seed)
        return tasks, split.X, ways, shots, queries, f"{args.tasks} tasks sampled with seed {args.seed}"
    if args.save_episodes:
        raise UserError("--save-episodes writes sampled tasks; it cannot be combined with --episodes")
    loader = image_file_loader(dataset, image_shape) if dataset else None
    tasks, extra = load_episodes(args.episodes, len(split.X), loader, labels=split.labels, split_path=cache)
    X = np.concatenate([split.X, np.stack(extra)]) if extra else split.X
    ways, shots, queries = episode_shape(tasks, args.episodes)
    for name, given, found in (("--ways", args.ways, ways), ("--shots", args.shots, shots)):
        if given is not None and given != found:
            raise UserError(f"{args.episodes}: its tasks have {found} where {name} asks for {given}")
    return tasks, X, ways, shots, queries, str(args.episodes)


def evaluate_resumably(model, X, tasks, steps, lr, device, partial: Path, key: dict) -> tuple[list, int]:
    """(per-task accuracies, how many were read back): the accuracies `partial` holds for these very settings
    (`key`), then the remaining tasks', written back to `partial` every PARTIAL_EVERY tasks or PARTIAL_SECONDS
    and when stopped, so a killed test continues where it was."""
    done = load_json(partial) if partial.is_file() else {}
    accs = list(done.get("per_task_accuracy", [])) if done.get("settings") == key else []
    if done and not accs:
        print(f"{partial}: from a test with other settings; starting over")
    resumed, saved, last_write = len(accs), len(accs), time.time()
    model.eval()  # no-op for the batch-statistics network, kept for models that care
    try:
        for task in tqdm(tasks[resumed:], desc="test", initial=resumed, total=len(tasks), leave=False,
                         mininterval=2):
            accs.append(evaluate_task(model, *task_tensors(X, task, device), steps, lr)[0])
            if len(accs) - saved >= PARTIAL_EVERY or time.time() - last_write >= PARTIAL_SECONDS:
                save_json(partial, {"settings": key, "per_task_accuracy": accs})
                saved, last_write = len(accs), time.time()
    finally:
        if len(accs) > saved:
            save_json(partial, {"settings": key, "per_task_accuracy": accs})
    return accs, resumed


def main(argv=None):
    args = get_parser().parse_args(argv)
    prov = provenance()  # the code as it starts: a commit made during a long test must not relabel its results
    set_threads(args.threads)
    device = pick_device(args.device)
    run = Path(args.run)
    cfg = load_json(run / "config.json")
    ckpt, ckpt_path, tag, selection = pick_checkpoint(run, cfg, args.checkpoint)
    arch = checked_arch(ckpt, ckpt_path)
    cache, split_name, own = pick_cache(args, run, cfg)
    split = load_split(cache)
    want = (arch["image_size"], arch["image_size"], arch["in_channels"])
    if split.X.shape[1:] != want:
        raise UserError(f"{cache}: images are {split.X.shape[1:]}, the model expects {want}")
    inner_lr = args.inner_lr if args.inner_lr is not None else cfg["inner_lr"]
    tasks, X, ways, shots, queries, source = pick_tasks(args, split, cache, args.dataset or cfg.get("dataset"),
                                                        want, args.queries or cfg["queries"])
    seen_classes = training_classes_in(cache, split.Y, recorded_path(run, cfg, cfg["train_cache"]),
                                       args.allow_seen_classes)
    model, head = build_model(ckpt, arch, ways, ckpt_path, device)  # weights that do not fit fail before writing
    settings = {"split": split_name, "cache": cache, "episodes": source, "checkpoint": str(ckpt_path),
                "seed": None if args.episodes else args.seed, "tasks": len(tasks), "ways": ways, "shots": shots,
                "queries": queries, "steps": args.steps, "inner_lr": inner_lr}
    out = Path(args.output) if args.output else \
        run / "results" / result_name(split_name, ways, shots, args.episodes or (None if own else cache), tag)
    check_output(out, settings)
    if args.save_episodes:
        save_episodes(args.save_episodes, tasks, cache, {"ways": ways, "shots": shots, "queries": queries,
                                                          "seed": args.seed}, labels=split.labels)

    t0, partial = time.time(), out.with_name(out.name + ".partial.json")
    key = {**{k: comparable(k, v) for k, v in settings.items()}, "tasks_sha256": tasks_sha256(tasks),
           "checkpoint_sha256": file_sha256(ckpt_path), "cache_sha256": file_sha256(cache)}
    accs, resumed = evaluate_resumably(model, torch.from_numpy(X), tasks, args.steps, inner_lr, device, partial, key)
    mean, ci = mean_ci95(accs)
    result = {**settings, "tasks_sha256": key["tasks_sha256"], "accuracy": mean, "ci95": ci,
              "ci95_method": CI95_METHOD, "seen_classes": seen_classes,
              "head": head, "checkpoint_epoch": ckpt["epoch"], "model_selection": selection,
              "seconds": round(time.time() - t0, 1), "resumed_after_tasks": resumed, "per_task_accuracy": accs,
              **prov}
    save_json(out, result)
    partial.unlink(missing_ok=True)
    acc = f"{100 * mean:.2f} ± {100 * ci:.2f} %" if ci is not None else f"{100 * mean:.2f} % (no interval)"
    new_head = f"; head {head}" if ways != arch["n_way"] else ""
    print(f"{split_name} {ways}-way {shots}-shot: {acc} over {len(tasks)} tasks ({args.steps} steps; {selection}, "
          f"epoch {ckpt['epoch']}{new_head}) -> {out}")


if __name__ == "__main__":
    cli_main(main)
