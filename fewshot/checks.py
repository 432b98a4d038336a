"""What maml.test and ep.test check before they evaluate: where the caches a run's config.json names are found,
that a result file is not replaced by a result computed otherwise, and that the tested classes are not the trained
ones."""

import sys
from pathlib import Path

import numpy as np

from fewshot.data import array_names, assert_disjoint_classes, load_array
from fewshot.errors import UserError
from fewshot.io import load_json

# what a result was computed with: a result file recording other values is not replaced (see check_output)
SETTINGS = ("split", "cache", "episodes", "checkpoint", "seed", "tasks", "ways", "shots", "queries", "steps",
            "inner_lr")


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


def comparable(key, value):
    """A setting as compared between runs: paths absolute, so that runs/x and ./runs/x are one cache."""
    is_file = key == "episodes" and isinstance(value, str) and Path(value).is_file()  # else "N tasks sampled ..."
    return str(Path(value).resolve()) if value is not None and (key in ("cache", "checkpoint") or is_file) else value


def check_output(out: Path, settings: dict) -> None:
    """Refuse to replace a result computed with other settings, before the (long) evaluation: result_name gives
    two caches with the same file name one result file. The same settings again overwrite it (e.g. after more
    training). Settings a result does not record are not compared."""
    if not out.exists():
        return
    old = load_json(out)
    if not isinstance(old, dict):
        raise UserError(f"{out}: exists and is not a test result; pass --output to write elsewhere")
    changed = [k for k in SETTINGS if k in old and comparable(k, old[k]) != comparable(k, settings[k])]
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
