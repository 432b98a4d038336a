"""The meta-test protocol that maml.test, ep.test and protonet.test share: the run and config a test opens, which
cache and tasks it is tested on (sampled with a seed, read from an episodes file, with or without unlabelled
images), and a per-task evaluation that a killed test resumes."""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fewshot.backbones import to_float
from fewshot.checks import check_output, comparable, recorded_path, training_classes_in
from fewshot.cli import nonneg_int, positive_int, seed_int
from fewshot.data import load_split
from fewshot.datasets import image_file_loader
from fewshot.episodes import Task, add_unlabeled, load_episodes, sample_tasks, save_episodes, tasks_sha256
from fewshot.errors import UserError
from fewshot.io import file_sha256, load_json, provenance, save_json
from fewshot.metrics import CI95_METHOD, mean_ci95
from fewshot.report import result_name
from fewshot.runtime import pick_device, set_threads

SPLITS = ("test", "val")
PARTIAL_EVERY, PARTIAL_SECONDS = 50, 30  # the partial file is rewritten after this many tasks or seconds


def add_task_options(p, queries_help="query images per way (default: the training run's)"):
    data = p.add_argument_group("tasks")
    data.add_argument("--split", choices=SPLITS,
                      help="the run's cache to test on: test (default) or val; with --cache or --episodes, the "
                           "split they hold (if not given: the run's split whose cache it is, else 'other')")
    data.add_argument("--cache", help="labelled cache to test on instead of the run's own")
    data.add_argument("--ways", type=positive_int, help="ways per task (default: 5; with --episodes, the file's)")
    data.add_argument("--shots", type=positive_int,
                      help="support images per way (default: 1; with --episodes, the file's)")
    data.add_argument("--queries", type=positive_int, help=queries_help)
    data.add_argument("--tasks", type=positive_int, default=1000, help="tasks to sample")
    data.add_argument("--seed", type=seed_int, default=0, help="seed of the sampled tasks (0 .. 2**31 - 1)")
    data.add_argument("--unlabeled", type=nonneg_int, default=0,
                      help="semi-supervised tasks: this many unlabelled images of each way join each task (the "
                           "support and query sets stay those of the plain tasks)")
    data.add_argument("--distractors", type=nonneg_int, default=0,
                      help="with --unlabeled: unlabelled images of this many other classes join too")
    data.add_argument("--allow-seen-classes", action="store_true",
                      help="test on a cache that shares classes with the run's train cache (their labels were "
                           "never read in training), as upstream's protocol does; the result records how many")
    data.add_argument("--save-episodes", help="write the sampled tasks to this JSON file")
    data.add_argument("--episodes", help="evaluate the tasks of this JSON file instead of sampling (image files it "
                                         "names by a relative path are found from its folder)")
    data.add_argument("--dataset", help="dataset name, to read image files named in --episodes (default: the "
                                        "run's, from encode.json)")
    return data


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
    to the images) or `--tasks` sampled from the split (as the baselines sample them for the same seed), with
    --unlabeled images per way and --distractors classes."""
    if args.distractors and not args.unlabeled:
        raise UserError("--distractors D adds --unlabeled N images of D other classes; give --unlabeled too")
    if args.save_episodes and args.unlabeled:
        raise UserError("--save-episodes writes support and query sets only; it cannot be combined with --unlabeled")
    if not args.episodes:
        ways, shots = args.ways or 5, args.shots or 1
        tasks = sample_tasks(split.labels, ways, shots, queries, args.tasks, args.seed)
        if args.unlabeled:
            tasks = add_unlabeled(tasks, split.labels, args.unlabeled, args.distractors, args.seed)
        return tasks, split.X, ways, shots, queries, f"{args.tasks} tasks sampled with seed {args.seed}"
    if args.save_episodes:
        raise UserError("--save-episodes writes sampled tasks; it cannot be combined with --episodes")
    if args.unlabeled:
        raise UserError("--unlabeled draws from the sampled tasks' classes; an --episodes file has none recorded")
    loader = image_file_loader(dataset, image_shape) if dataset else None
    tasks, extra = load_episodes(args.episodes, len(split.X), loader, labels=split.labels, split_path=cache)
    X = np.concatenate([split.X, np.stack(extra)]) if extra else split.X
    ways, shots, queries = episode_shape(tasks, args.episodes)
    for name, given, found in (("--ways", args.ways, ways), ("--shots", args.shots, shots)):
        if given is not None and given != found:
            raise UserError(f"{args.episodes}: its tasks have {found} where {name} asks for {given}")
    return tasks, X, ways, shots, queries, str(args.episodes)


def _images(X: torch.Tensor, rows, device):  # uint8 NHWC rows of the bank -> float NCHW on device
    return to_float(X[torch.from_numpy(np.asarray(rows))].to(device))


def _labels(y, device):
    return torch.from_numpy(np.asarray(y)).long().to(device)


def task_tensors(X: torch.Tensor, task: Task, device):
    """uint8 NHWC image bank + task -> (xs, ys, xq, yq) float tensors on device."""
    return (_images(X, task.support, device), _labels(task.support_y, device), _images(X, task.query, device),
            _labels(task.query_y, device))


def stacked_task_tensors(X: torch.Tensor, tasks: list, device, unlabeled: bool = False) -> tuple:
    """task_tensors of tasks of one shape, stacked along a first (task) dimension T: (xs, ys, xq, yq), and with
    `unlabeled` the tasks' unlabelled images xu (T x U x C x H x W, U may be 0) after them."""
    stacked = [torch.stack(part) for part in zip(*(task_tensors(X, t, device) for t in tasks))]
    if unlabeled:
        stacked.append(torch.stack([_images(X, t.unlabeled, device) for t in tasks]))
    return tuple(stacked)


def query_accuracies(predict, X: torch.Tensor, tasks: list, device, unlabeled: bool = False) -> list:
    """The query accuracy on each task of `predict(xs, ys, xq[, xu], ways)`, the T x Q predicted labels of T
    stacked tasks (stacked_task_tensors): tasks of one shape are predicted together, others one by one."""
    shapes = {(len(t.support), len(t.query), len(t.unlabeled) if unlabeled else 0, len(t.classes)) for t in tasks}
    if len(shapes) > 1:
        return [acc for t in tasks for acc in query_accuracies(predict, X, [t], device, unlabeled)]
    xs, ys, xq, yq, *xu = stacked_task_tensors(X, tasks, device, unlabeled)
    return (predict(xs, ys, xq, *xu, len(tasks[0].classes)) == yq).float().mean(1).tolist()


def evaluate_resumably(evaluate_tasks, tasks, partial: Path, key: dict, batch: int = 1) -> tuple[list, int]:
    """(per-task accuracies, how many were read back): the accuracies `partial` holds for these very settings
    (`key`), then `evaluate_tasks(chunk)` (a list of accuracies) of the remaining tasks in chunks of `batch`,
    written back to `partial` every PARTIAL_EVERY tasks or PARTIAL_SECONDS and when stopped, so a killed test
    continues where it was."""
    done = load_json(partial) if partial.is_file() else {}
    accs = list(done.get("per_task_accuracy", [])) if done.get("settings") == key else []
    if done and not accs:
        print(f"{partial}: from a test with other settings; starting over")
    resumed, saved, last_write = len(accs), len(accs), time.time()
    try:
        with tqdm(desc="test", initial=resumed, total=len(tasks), leave=False, mininterval=2) as bar:
            for start in range(resumed, len(tasks), batch):
                chunk = evaluate_tasks(tasks[start:start + batch])
                assert len(chunk) == len(tasks[start:start + batch]), "one accuracy per task"
                accs += chunk
                bar.update(len(chunk))
                if len(accs) - saved >= PARTIAL_EVERY or time.time() - last_write >= PARTIAL_SECONDS:
                    save_json(partial, {"settings": key, "per_task_accuracy": accs})
                    saved, last_write = len(accs), time.time()
    finally:
        if len(accs) > saved:
            save_json(partial, {"settings": key, "per_task_accuracy": accs})
    return accs, resumed


def open_test_run(args, learner: str | None = None, other_tests: str = "") -> tuple:
    """(provenance, device, run folder, its config.json) of a test's --run, once --threads is set. With `learner`,
    a run whose config.json names another learner (MAML's names none) is refused; `other_tests` says where to
    test it."""
    prov = provenance()  # the code as it starts: a commit made during a long test must not relabel its results
    set_threads(args.threads)
    device = pick_device(args.device)
    run = Path(args.run)
    cfg = load_json(run / "config.json")
    if learner and (not isinstance(cfg, dict) or cfg.get("learner") != learner):
        article = "an" if learner[0] in "aeiou" else "a"  # as the name is spoken: "an ep.train run"
        raise UserError(f"{run}: not {article} {learner}.train run (its config.json has no \"learner\": "
                        f"\"{learner}\"); {other_tests}")
    return prov, device, run, cfg


@dataclass
class TestTasks:
    """What a test evaluates: its settings (recorded in the result), tasks, image bank and output file."""
    settings: dict
    tasks: list
    X: np.ndarray
    cache: str
    out: Path
    seen_classes: int | None
    labels: np.ndarray  # of the cache, for an episodes file's fingerprint
    save_episodes: str | None  # where to write the sampled tasks, once the model is known to load


def test_tasks(args, run: Path, cfg: dict, image_shape: tuple, default_queries: int, tag, method: dict) -> TestTasks:
    """The cache, tasks and result file of a test of `run`, everything checked before the (long) evaluation:
    images the model takes, classes disjoint from training, a result file not computed otherwise. `method`
    holds the meta-learner's own settings (checkpoint, steps, ...), recorded and compared with the others."""
    cache, split_name, own = pick_cache(args, run, cfg)
    split = load_split(cache)
    if split.X.shape[1:] != tuple(image_shape):
        raise UserError(f"{cache}: images are {split.X.shape[1:]}, the model expects {tuple(image_shape)}")
    tasks, X, ways, shots, queries, source = pick_tasks(args, split, cache, args.dataset or cfg.get("dataset"),
                                                        image_shape, args.queries or default_queries)
    seen = training_classes_in(cache, split.Y, recorded_path(run, cfg, cfg["train_cache"]), args.allow_seen_classes)
    settings = {"split": split_name, "cache": cache, "episodes": source, "seed": None if args.episodes else args.seed,
                "tasks": len(tasks), "ways": ways, "shots": shots, "queries": queries, "unlabeled": args.unlabeled,
                "distractors": args.distractors, **method}
    out = Path(args.output) if args.output else run / "results" / result_name(
        split_name, ways, shots, args.episodes or (None if own else cache), tag, args.unlabeled, args.distractors)
    check_output(out, settings)
    return TestTasks(settings, tasks, X, cache, out, seen, split.labels, args.save_episodes)


def run_test(t: TestTasks, evaluate_tasks, checkpoint, batch: int = 1) -> dict:
    """Evaluate every task, `batch` at a time (resuming a killed test from {out}.partial.json); the result's
    common entries."""
    if t.save_episodes:
        meta = {k: t.settings[k] for k in ("ways", "shots", "queries", "seed")}
        save_episodes(t.save_episodes, t.tasks, t.cache, meta, labels=t.labels)
    t0, partial = time.time(), t.out.with_name(t.out.name + ".partial.json")
    key = {**{k: comparable(k, v) for k, v in t.settings.items()}, "tasks_sha256": tasks_sha256(t.tasks),
           "checkpoint_sha256": file_sha256(checkpoint), "cache_sha256": file_sha256(t.cache)}
    accs, resumed = evaluate_resumably(evaluate_tasks, t.tasks, partial, key, batch)
    mean, ci = mean_ci95(accs)
    return {**t.settings, "tasks_sha256": key["tasks_sha256"], "accuracy": mean, "ci95": ci,
            "ci95_method": CI95_METHOD, "seen_classes": t.seen_classes, "seconds": round(time.time() - t0, 1),
            "resumed_after_tasks": resumed, "per_task_accuracy": accs}


def save_result(t: TestTasks, result: dict, how: str) -> None:
    """Write the result (then drop the partial file) and print one line."""
    save_json(t.out, result)
    t.out.with_name(t.out.name + ".partial.json").unlink(missing_ok=True)
    mean, ci = result["accuracy"], result["ci95"]
    acc = f"{100 * mean:.2f} ± {100 * ci:.2f} %" if ci is not None else f"{100 * mean:.2f} % (no interval)"
    semi = f" + {t.settings['unlabeled']} unlabelled per way" if t.settings["unlabeled"] else ""
    semi += f" and {t.settings['distractors']} distractor classes" if t.settings["distractors"] else ""
    print(f"{t.settings['split']} {t.settings['ways']}-way {t.settings['shots']}-shot{semi}: {acc} over "
          f"{len(t.tasks)} tasks ({how}) -> {t.out}")
