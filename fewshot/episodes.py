"""N-way K-shot tasks over a labelled or pseudo-labelled split, and fixed episode lists as JSON.

A task draws N distinct classes, K support and Q query images of each (no row in both: a train cache repeats a
small cluster's images, so two rows may hold the same image), and relabels the classes 0..N-1 in random order.
Indices refer to rows of the split's arrays. Sampling uses its own `numpy.random.Generator`, never global state.
A saved episodes file records a fingerprint of its split, so it is not evaluated against another split by mistake.
"""

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fewshot.errors import UserError
from fewshot.io import load_json, save_json


@dataclass
class Task:
    support: np.ndarray  # (N*K,) row indices
    support_y: np.ndarray  # (N*K,) labels 0..N-1
    query: np.ndarray  # (N*Q,)
    query_y: np.ndarray  # (N*Q,)
    classes: np.ndarray  # (N,) the split's label of each way
    unlabeled: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (U,) rows without labels


class EpisodeSampler:
    """Tasks over `labels`. With `groups` (the group of each class, indexed by label), each task first draws one
    group uniformly, then its N ways among that group's classes: cfe.encode --partitions writes several k-means
    partitions of the same images as one cache, and a task must not mix them. One group is the same as none."""

    def __init__(self, labels, n_way: int, k_shot: int, n_query: int, groups=None):
        labels = np.asarray(labels)
        if min(n_way, k_shot, n_query) < 1:
            raise UserError(f"ways, shots and queries must be >= 1, got {n_way}/{k_shot}/{n_query}")
        classes, counts = np.unique(labels, return_counts=True)
        need = k_shot + n_query
        self.classes = classes[counts >= need]
        if len(self.classes) < n_way:
            raise UserError(f"{n_way}-way {k_shot}-shot tasks with {n_query} queries need {n_way} classes of >= "
                            f"{need} images; this split has {len(self.classes)} (of {len(classes)} classes)")
        self.members = {c: np.flatnonzero(labels == c) for c in self.classes}
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.by_group = None  # one array of classes per group, when there are several
        groups = None if groups is None else np.asarray(groups)
        group_names = None if groups is None else np.unique(groups[classes])  # groups of all classes
        if group_names is not None and len(group_names) > 1:
            group_of = groups[self.classes]  # of the classes with enough images
            self.by_group = [self.classes[group_of == g] for g in group_names]
            few = [(g, len(c)) for g, c in zip(group_names, self.by_group) if len(c) < n_way]
            if few:
                raise UserError(f"{n_way}-way tasks need {n_way} classes of >= {need} images in every group "
                                f"(partition); group {few[0][0]} has {few[0][1]}")

    def sample(self, rng: np.random.Generator) -> Task:
        n, k, q = self.n_way, self.k_shot, self.n_query
        classes = self.classes if self.by_group is None else self.by_group[rng.integers(len(self.by_group))]
        ways = rng.choice(classes, size=n, replace=False)  # random order = random relabelling 0..N-1
        s_idx, q_idx = [], []
        for c in ways:
            pick = rng.choice(self.members[c], size=k + q, replace=False)
            s_idx.append(pick[:k])
            q_idx.append(pick[k:])
        return Task(support=np.concatenate(s_idx), support_y=np.repeat(np.arange(n), k),
                    query=np.concatenate(q_idx), query_y=np.repeat(np.arange(n), q), classes=ways)


def sample_tasks(labels, ways: int, shots: int, queries: int, n: int, seed: int) -> list:
    """The `n` test tasks of `seed` over `labels`: maml.test and the baselines of fewshot.baseline evaluate the
    same tasks for the same seed, so their accuracies compare task by task (a paired difference)."""
    from fewshot.runtime import epoch_seed

    sampler = EpisodeSampler(labels, ways, shots, queries)
    rng = np.random.default_rng(epoch_seed(seed, 0, stream=11))
    return [sampler.sample(rng) for _ in range(n)]


def add_unlabeled(tasks, labels, per_class: int, distractors: int, seed: int) -> list:
    """The semi-supervised tasks of EP and LST: each task keeps its support and query sets and gains `per_class`
    unlabelled images of each of its ways (none of its support or query images) and of `distractors` other
    classes. They come from their own stream of `seed`, so the support and query sets, and tasks_sha256, are
    those of the plain tasks: results with and without unlabelled images pair task by task."""
    from fewshot.runtime import epoch_seed

    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(epoch_seed(seed, 0, stream=13))
    out = []
    for t in tasks:
        used = np.concatenate([t.support, t.query])
        others = np.setdiff1d(classes[counts >= per_class], t.classes)
        if len(others) < distractors:
            raise UserError(f"{distractors} distractor classes of >= {per_class} images are needed; the split has "
                            f"{len(others)} besides a task's ways")
        rows = []
        for c in [*t.classes, *rng.choice(others, size=distractors, replace=False)]:
            free = np.setdiff1d(np.flatnonzero(labels == c), used)
            if len(free) < per_class:
                raise UserError(f"class {c} has {len(free)} images besides a task's support and query sets; "
                                f"--unlabeled {per_class} needs {per_class}")
            rows.append(rng.choice(free, size=per_class, replace=False))
        out.append(replace(t, unlabeled=np.concatenate(rows).astype(np.int64)))
    return out


def tasks_sha256(tasks) -> str:
    """A fingerprint of a task list (rows and labels of every support and query set; unlabelled images are
    left out, see add_unlabeled): results recording the same one were computed on the same tasks, and their
    per-task accuracies pair."""
    digest = hashlib.sha256()
    for t in tasks:
        for part in (t.support, t.support_y, t.query, t.query_y):
            digest.update(np.asarray(part, np.int64).tobytes())
    return digest.hexdigest()


def split_fingerprint(labels) -> dict:
    """What row indices of an episodes file refer to: the split's number of rows and a short sha256 of its labels
    (as little-endian int64, so the same labels give the same digest on every machine)."""
    y = np.asarray(labels).astype("<i8")
    return {"images": int(len(y)), "labels_sha256": hashlib.sha256(y.tobytes()).hexdigest()[:16]}


def _describe(fp) -> str:
    if not isinstance(fp, dict):
        return f"fingerprint {json.dumps(fp)[:60]}"
    return f"{fp.get('images')} images, labels sha256 {fp.get('labels_sha256')}"


def save_episodes(path, tasks: list, split_path: str, meta: dict | None = None, labels=None) -> None:
    """Write tasks as JSON: each lists its support and query images by split index, with labels. `labels`, the
    split's labels, adds the split's fingerprint, which load_episodes checks."""
    def items(idx, y):
        return [{"index": int(i), "label": int(label)} for i, label in zip(idx, y)]

    fingerprint = {} if labels is None else {"split_fingerprint": split_fingerprint(labels)}
    save_json(path, {"split": str(split_path), **fingerprint, **(meta or {}),
                     "tasks": [{"support": items(t.support, t.support_y), "query": items(t.query, t.query_y)}
                               for t in tasks]})


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_episodes(path, n_images: int, load_file=None, labels=None, split_path="this split") -> tuple[list, dict]:
    """Read tasks written by `save_episodes` or by hand. Items give `index` (a row of the split) or `path` (an
    image file, turned into pixels by `load_file(path) -> HxWxC uint8`; a relative path is taken from the episodes
    file's folder, so a set of episodes travels with its images). Returns (tasks, extra_images) where
    file images are appended after the split's rows: index n_images + j is extra_images[j].
    A file with a split fingerprint is refused unless it matches `labels`, those of the split `split_path` it is
    evaluated on (a file written by hand has none and is taken as it is)."""
    doc = load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list) or not doc["tasks"]:
        raise UserError(f"{path}: expected an object with a non-empty 'tasks' list")
    if labels is not None and "split_fingerprint" in doc:
        saved, here = doc["split_fingerprint"], split_fingerprint(labels)
        if saved != here:
            raise UserError(f"{path}: its tasks index {doc.get('split', 'another split')} ({_describe(saved)}), "
                            f"not {split_path} ({_describe(here)}); pass that split with --cache")
    extra, tasks = [], []
    for t_no, t in enumerate(doc["tasks"]):
        if not isinstance(t, dict):
            raise UserError(f"{path}: task {t_no} is not an object with 'support' and 'query' lists")
        parts = {}
        for part in ("support", "query"):
            idx, ys = [], []
            items = t.get(part) or []
            if not isinstance(items, list):
                raise UserError(f"{path}: task {t_no} {part} is not a list")
            for item in items:
                if not isinstance(item, dict) or not _is_int(item.get("label")):
                    raise UserError(f"{path}: task {t_no} {part} items must be objects with an integer 'label' "
                                    f"and an 'index' or 'path', got {json.dumps(item)[:80]}")
                if "index" in item:
                    if not _is_int(item["index"]):
                        raise UserError(f"{path}: task {t_no} {part} index {item['index']!r} is not an integer")
                    i = int(item["index"])
                    if not 0 <= i < n_images:
                        raise UserError(f"{path}: task {t_no} {part} index {i} outside the split (0..{n_images - 1})")
                elif "path" in item:
                    if not isinstance(item["path"], str) or not item["path"]:
                        raise UserError(f"{path}: task {t_no} {part} path {item['path']!r} is not a file name")
                    if load_file is None:
                        raise UserError(f"{path}: task {t_no} names image files, which this dataset cannot read")
                    extra.append(load_file(str(Path(path).parent / item["path"])))  # (an absolute path stays)
                    i = n_images + len(extra) - 1
                else:
                    raise UserError(f"{path}: task {t_no} {part} item without 'index' or 'path'")
                idx.append(i)
                ys.append(int(item["label"]))
            if not idx:
                raise UserError(f"{path}: task {t_no} has no {part} images")
            parts[part] = (np.array(idx), np.array(ys))
        shared = np.intersect1d(parts["support"][0], parts["query"][0])
        if len(shared):
            raise UserError(f"{path}: task {t_no} has images in both its support and query sets "
                            f"(index {shared[:5].tolist()})")
        n_way = len(np.unique(parts["support"][1]))
        if set(np.unique(parts["query"][1])) - set(np.unique(parts["support"][1])):
            raise UserError(f"{path}: task {t_no} has query labels absent from its support set")
        if sorted(np.unique(parts["support"][1])) != list(range(n_way)):
            raise UserError(f"{path}: task {t_no} labels must be 0..N-1")
        tasks.append(Task(support=parts["support"][0], support_y=parts["support"][1], query=parts["query"][0],
                          query_y=parts["query"][1], classes=np.arange(n_way)))
    return tasks, extra
