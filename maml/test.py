"""Meta-test a MAML run: mean accuracy and 95% CI over N-way K-shot tasks of the test split.

    python -m maml.test --run runs/omniglot/maml --shots 1
    python -m maml.test --run runs/omniglot/maml --shots 5 --save-episodes episodes_5shot.json
    python -m maml.test --run runs/omniglot/maml --episodes episodes_5shot.json

Reads the training run's config.json (architecture, inner step size, caches) and its best checkpoint. Writes
results/test_{ways}w{shots}s.json into the run folder (or --output) and prints the result; tasks from another
cache or an episodes file, and other checkpoints (`--checkpoint last`, a snapshot epoch_NNNN.pt, or `best@N`: the
model the run would have selected had it meta-trained N epochs), add their names
(results/test_{ways}w{shots}s_{cache}_{checkpoint}.json), so they never replace the run's own result.
An existing result file is replaced only by a test with the same settings (caches with one file name share a
result name: pass --output for the other). With --episodes, ways and shots are the file's, and a file saved with
--save-episodes must be evaluated on the split it was drawn from. A test cache that is the run's train cache, or
shares classes (true labels) with it, is refused unless --allow-seen-classes.
"""

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fewshot.checkpoint import load_checkpoint, load_state, snapshot_path
from fewshot.cli import DEVICE_HELP, THREADS_HELP, HelpFormatter, nonneg_int, positive_float, positive_int, seed_int
from fewshot.data import array_names, assert_disjoint_classes, load_array, load_split
from fewshot.datasets import image_file_loader
from fewshot.episodes import EpisodeSampler, load_episodes, save_episodes
from fewshot.errors import UserError, cli_main
from fewshot.io import load_json, provenance, read_jsonl, save_json
from fewshot.metrics import CI95_METHOD, mean_ci95
from fewshot.report import result_name
from fewshot.runtime import epoch_seed, pick_device, set_threads
from maml.common import evaluate, selection_score
from maml.maml import MAMLNet


def get_parser():
    p = argparse.ArgumentParser(prog="python -m maml.test", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, help="maml.train run folder (holds config.json and checkpoints/)")
    p.add_argument("--checkpoint", default="best",
                   help="best (the run's selection), last, a checkpoint path such as RUN/checkpoints/epoch_0040.pt, "
                        "or best@N: the snapshot a run of N epochs would have selected (shorter budgets of a "
                        "constant-rate run trained with --save-every 1)")
    p.add_argument("--cache", help="labelled split to test on; default: the test cache beside the train cache")
    p.add_argument("--dataset", help="dataset name, to read image files named in --episodes (e.g. omniglot)")
    p.add_argument("--ways", type=positive_int, help="ways per task (default: 5; with --episodes, the file's)")
    p.add_argument("--shots", type=positive_int,
                   help="support images per way (default: 1; with --episodes, the file's)")
    p.add_argument("--queries", type=positive_int, help="query images per way (default: the training run's)")
    p.add_argument("--tasks", type=positive_int, default=1000, help="test tasks to sample")
    p.add_argument("--steps", type=positive_int, default=50, help="adaptation steps")
    p.add_argument("--inner-lr", type=positive_float, help="adaptation step size (default: the training run's)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the sampled tasks (0 .. 2**31 - 1)")
    p.add_argument("--allow-seen-classes", action="store_true",
                   help="test on a cache that shares classes with the run's train cache (their labels were never "
                        "read in training), as upstream's protocol does; the result records how many")
    p.add_argument("--save-episodes", help="write the sampled tasks to this JSON file")
    p.add_argument("--episodes", help="evaluate the tasks of this JSON file instead of sampling (image files it "
                                      "names by a relative path are found from its folder)")
    p.add_argument("--output", help="results JSON (default: RUN/results/test_{ways}w{shots}s.json, with _NAME "
                                    "added for another --cache or --episodes file NAME.json and for a checkpoint "
                                    "other than best)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    return p


def recorded_path(run: Path, cfg: dict, value: str) -> str:
    """A relative path from the run's config.json, which training recorded as typed, relative to the directory it
    was started in. When the path does not exist from here, it is tried from that directory: the one from which
    the config's `out` names this run folder (so a test may start anywhere, and a folder moved with its caches
    still finds them)."""
    path, out = Path(value), Path(cfg.get("out", ""))
    if path.is_absolute() or path.exists() or out.is_absolute() or ".." in out.parts:
        return value
    parts = run.resolve().parts
    n = len(out.parts)
    if 0 < n < len(parts) and parts[-n:] == out.parts:
        found = Path(*parts[:-n]) / path
        if found.exists():
            return str(found)
    return value


def default_test_cache(train_cache: str) -> str | None:
    """The test cache written beside a train cache (`..._train.npz` -> `..._test.npz`); None for other names."""
    return train_cache[:-len("_train.npz")] + "_test.npz" if train_cache.endswith("_train.npz") else None


def episode_shape(tasks, path) -> tuple[int, int, int | None]:
    """(ways, shots, queries per way) of an episodes file's tasks; queries is None when it varies."""
    ways = {len(t.classes) for t in tasks}
    shots = {c for t in tasks for c in np.bincount(t.support_y)}
    queries = {c for t in tasks for c in np.bincount(t.query_y, minlength=len(t.classes))}
    if len(ways) != 1 or len(shots) != 1:
        raise UserError(f"{path}: tasks must share one number of ways and of support images per way, found "
                        f"{sorted(ways)} ways and {sorted(shots)} shots; split the file by setting")
    return ways.pop(), int(shots.pop()), int(queries.pop()) if len(queries) == 1 else None


# what a result was computed with: a result file recording other values is not replaced (see check_output)
SETTINGS = ("cache", "episodes", "checkpoint", "seed", "tasks", "ways", "shots", "queries", "steps", "inner_lr")
ARCH_KEYS = {"in_channels", "hidden", "image_size", "n_way"}  # MAMLNet's arguments, as maml.train saves them


def _comparable(key, value):
    """A setting as compared between runs: paths absolute, so that runs/x and ./runs/x are one cache."""
    is_file = key == "episodes" and isinstance(value, str) and Path(value).is_file()  # else "N tasks sampled ..."
    return str(Path(value).resolve()) if value is not None and (key in ("cache", "checkpoint") or is_file) else value


def check_output(out: Path, settings: dict) -> None:
    """Refuse to replace a result computed with other settings, before the (long) evaluation: result_name gives
    two caches with the same file name one result file. The same settings again overwrite it (e.g. after more
    training). Settings an older result does not record are not compared."""
    if not out.exists():
        return
    old = load_json(out)
    if not isinstance(old, dict):
        raise UserError(f"{out}: exists and is not a test result; pass --output to write elsewhere")
    changed = [k for k in SETTINGS if k in old and _comparable(k, old[k]) != _comparable(k, settings[k])]
    if changed:
        shown = [k if k in ("cache", "checkpoint", "episodes") else f"{k} {old[k]} -> {settings[k]}" for k in changed]
        raise UserError(f"{out}: holds a result computed with other settings ({', '.join(shown)}); pass --output "
                        "to write this one elsewhere (or delete that file)")


def training_classes_in(cache: str, test_labels: np.ndarray, train_cache: str, allow: bool) -> int | None:
    """Class splits must be disjoint: tasks drawn from the classes the run trained on measure memory, not
    few-shot learning. Refuse a test cache that is the run's train cache itself, or whose true labels Y meet the
    train cache's (a copy of the train cache among them), unless `allow` (--allow-seen-classes, for protocols
    such as upstream's, whose test characters overlap the train split). Meta-test is no training step, so it may
    read those labels. Returns how many of the cache's classes the run trained on, recorded with the result; None
    when the train cache has no labels (upstream-written or label-free) or is gone.
    NOTE: labels are compared as the class ids of one dataset, as every cache written here numbers them; a cache
    of another dataset whose ids happen to overlap is refused too (--allow-seen-classes lets it through)."""
    train = Path(train_cache)
    if not train.is_file():  # e.g. a run folder copied without its caches: say that nothing was checked
        print(f"warning: {train_cache}: not found; cannot check that {cache} shares no classes with the run's "
              "training split", file=sys.stderr)
        return None
    if Path(cache).resolve() == train.resolve() and not allow:
        raise UserError(f"{cache} is the run's training split {train_cache}; test on a split of other classes "
                        "(or pass --allow-seen-classes)")
    if "Y" not in array_names(train):
        return None
    train_labels = load_array(train, "Y")
    if not allow:
        assert_disjoint_classes({f"test {cache}": test_labels, f"training {train_cache}": train_labels})
    return int(len(np.intersect1d(test_labels, train_labels)))


BUDGET = re.compile(r"best@([1-9][0-9]*)")  # --checkpoint best@N


def checkpoint_path(run: Path, name: str) -> Path:
    return run / "checkpoints" / f"{name}.pt" if name in ("best", "last") else Path(name)


def budget_snapshot(run: Path, cfg: dict, budget: int) -> tuple[Path, int]:
    """(snapshot path, epoch) of `--checkpoint best@N`: the model this run would have selected had it meta-trained
    N epochs, so shorter budgets are tested without training again. With the constant meta-learning rate nothing
    in an epoch depends on the total budget (the rate is the only setting that reads it), so the first N epochs
    of a longer run are those of an N-epoch run of the same seed, and its selection is the epoch with the highest
    val accuracy among the first N, the later on a tie (as maml.train keeps; the latest without a val split).
    That epoch's model must have been kept: its snapshot (train with --save-every 1 to test any budget), or
    best.pt or last.pt when they hold that epoch (e.g. best@N of the run's own N epochs)."""
    schedule = cfg.get("meta_lr_schedule", "constant")
    if schedule != "constant":
        raise UserError(f"{run}: meta-trained with the {schedule} meta-learning rate, whose every step depends on "
                        "the total budget; best@N needs the constant rate")
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{metrics}: not found; best@N reads the run's val accuracies from it")
    rows = {r.get("epoch"): r for r in read_jsonl(metrics) if isinstance(r, dict)}
    if any(e not in rows for e in range(1, budget + 1)):
        raise UserError(f"{metrics}: holds {len(rows)} epochs; best@{budget} needs epochs 1 to {budget}")
    score = {e: selection_score(rows[e]) for e in range(1, budget + 1)}
    if not all(isinstance(v, (int, float)) for v in score.values()):
        raise UserError(f"{metrics}: a val_acc among epochs 1 to {budget} is not a number")
    epoch = max(score, key=lambda e: (score[e], e))
    path = snapshot_path(run, epoch)
    if path.is_file():
        return path, epoch
    for kept in (run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"):
        if kept.is_file() and load_checkpoint(kept, "maml", required=("epoch",))["epoch"] == epoch:
            return kept, epoch
    raise UserError(f"{path}: not found; best@{budget} selects epoch {epoch}, whose snapshot the run did not "
                    f"keep (it kept every {cfg.get('save_every', '?')}); train with --save-every 1")


def checked_arch(ckpt: dict, path) -> dict:
    arch = ckpt["arch"]
    if not isinstance(arch, dict) or set(arch) != ARCH_KEYS:
        raise UserError(f"{path}: its 'arch' entry is not a MAML architecture (expected {sorted(ARCH_KEYS)})")
    return dict(arch)


def build_model(ckpt: dict, arch: dict, ways: int, path, device) -> tuple:
    """(model, head): the checkpoint's model for `ways`-way tasks, and how its classifier head was set up."""
    state, head = ckpt["model"], f"trained ({arch['n_way']} ways)"
    if ways != arch["n_way"] and isinstance(state, dict) and "classifier.weight" in state:
        # MAML's head has one output per way; a different N needs a head of that size, freshly zeroed
        # (zero init, as in "MAML with zero-initialised heads", keeps the adapted model label-symmetric).
        state = {**state, "classifier.weight": torch.zeros(ways, *state["classifier.weight"].shape[1:]),
                 "classifier.bias": torch.zeros(ways)}
        head = f"zero-initialised for {ways} ways (trained with {arch['n_way']})"
    model = MAMLNet(**{**arch, "n_way": ways}).to(device)
    load_state(model, state, path)
    return model, head


def episode_tasks(args, split, cache: str, dataset, want) -> tuple:
    """(tasks, images, ways, shots, queries) of --episodes; image files it names are appended to the images."""
    loader = image_file_loader(dataset, want) if dataset else None
    tasks, extra = load_episodes(args.episodes, len(split.X), loader, labels=split.labels, split_path=cache)
    X = np.concatenate([split.X, np.stack(extra)]) if extra else split.X
    ways, shots, queries = episode_shape(tasks, args.episodes)
    for name, given, found in (("--ways", args.ways, ways), ("--shots", args.shots, shots)):
        if given is not None and given != found:
            raise UserError(f"{args.episodes}: its tasks have {found} where {name} asks for {given}")
    return tasks, X, ways, shots, queries


def main(argv=None):
    args = get_parser().parse_args(argv)
    prov = provenance()  # the code as it starts: a commit made during a long test must not relabel its results
    set_threads(args.threads)
    device = pick_device(args.device)
    run = Path(args.run)
    cfg = load_json(run / "config.json")
    budget = BUDGET.fullmatch(args.checkpoint)
    if budget:
        ckpt_path, epoch = budget_snapshot(run, cfg, int(budget[1]))
    else:
        ckpt_path = checkpoint_path(run, args.checkpoint)
    selected = ckpt_path.resolve() == (run / "checkpoints" / "best.pt").resolve()
    ckpt = load_checkpoint(ckpt_path, "maml", required=("model", "arch", "epoch", "selection") if selected
                           else ("model", "arch", "epoch"))
    arch = checked_arch(ckpt, ckpt_path)
    selection = ckpt["selection"] if selected else f"{ckpt_path.stem} checkpoint, not the run's selection"
    if budget:
        if ckpt["epoch"] != epoch:
            raise UserError(f"{ckpt_path}: holds epoch {ckpt['epoch']}, not {epoch} as its name says")
        selection = f"the selection within the first {budget[1]} epochs ({ckpt_path.name})"

    train_cache = recorded_path(run, cfg, cfg["train_cache"])
    own = default_test_cache(cfg["train_cache"])  # the run's own test split
    if not (args.cache or own):
        raise UserError(f"{cfg['train_cache']}: cannot tell which test cache goes with this train cache; pass --cache")
    own = own and recorded_path(run, cfg, own)
    cache = args.cache or own
    elsewhere = args.episodes or (None if own and Path(cache).resolve() == Path(own).resolve() else cache)
    split = load_split(cache)
    want = (arch["image_size"], arch["image_size"], arch["in_channels"])
    if split.X.shape[1:] != want:
        raise UserError(f"{cache}: images are {split.X.shape[1:]}, the model expects {want}")
    queries = args.queries if args.queries is not None else cfg["queries"]
    inner_lr = args.inner_lr if args.inner_lr is not None else cfg["inner_lr"]
    if args.episodes and args.save_episodes:
        raise UserError("--save-episodes writes sampled tasks; it cannot be combined with --episodes")
    if args.episodes:
        tasks, X, ways, shots, queries = episode_tasks(args, split, cache, args.dataset or cfg.get("dataset"), want)
        source = str(args.episodes)
    else:
        ways, shots, X = args.ways or 5, args.shots or 1, split.X
        sampler = EpisodeSampler(split.labels, ways, shots, queries)
        rng = np.random.default_rng(epoch_seed(args.seed, 0, stream=11))
        tasks = [sampler.sample(rng) for _ in range(args.tasks)]
        source = f"{args.tasks} tasks sampled with seed {args.seed}"
    seen_classes = training_classes_in(cache, split.Y, train_cache, args.allow_seen_classes)
    model, head = build_model(ckpt, arch, ways, ckpt_path, device)  # weights that do not fit fail before writing
    settings = {"cache": cache, "episodes": source, "checkpoint": str(ckpt_path),
                "seed": None if args.episodes else args.seed, "tasks": len(tasks), "ways": ways, "shots": shots,
                "queries": queries, "steps": args.steps, "inner_lr": inner_lr}
    out = Path(args.output) if args.output else \
        run / "results" / result_name(ways, shots, elsewhere, args.checkpoint if budget else
                                      None if selected else ckpt_path)
    check_output(out, settings)
    if args.save_episodes:
        save_episodes(args.save_episodes, tasks, cache, {"ways": ways, "shots": shots, "queries": queries,
                                                          "seed": args.seed}, labels=split.labels)

    t0 = time.time()
    accs = evaluate(model, torch.from_numpy(X), tasks, args.steps, inner_lr, device,
                    f"test {ways}-way {shots}-shot")
    mean, ci = mean_ci95(accs)
    result = {**settings, "accuracy": mean, "ci95": ci, "ci95_method": CI95_METHOD, "seen_classes": seen_classes,
              "head": head, "checkpoint_epoch": ckpt["epoch"], "model_selection": selection,
              "seconds": round(time.time() - t0, 1), "per_task_accuracy": accs, **prov}
    save_json(out, result)
    acc = f"{100 * mean:.2f} ± {100 * ci:.2f} %" if ci is not None else f"{100 * mean:.2f} % (no interval)"
    new_head = f"; head {head}" if ways != arch["n_way"] else ""
    print(f"{ways}-way {shots}-shot: {acc} over {len(tasks)} tasks ({args.steps} steps; {selection}, "
          f"epoch {ckpt['epoch']}{new_head}) -> {out}")


if __name__ == "__main__":
    cli_main(main)
