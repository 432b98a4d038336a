"""fewshot.episodes: N-way K-shot tasks (disjoint support/query, labels 0..N-1, distinct classes, seeded) and
the episode JSON files."""

import json
from pathlib import Path

import numpy as np
import pytest

from fewshot.episodes import EpisodeSampler, Task, load_episodes, save_episodes, split_fingerprint
from fewshot.errors import UserError

# 12 classes with labels 100..111 (not 0-based, to catch relabelling mistakes), 10 images each, shuffled rows
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(100, 112), 10))


@pytest.mark.parametrize("n,k,q", [(5, 1, 5), (5, 5, 5), (12, 1, 9), (3, 2, 8)])
def test_task_structure(n, k, q):
    sampler = EpisodeSampler(LABELS, n, k, q)
    rng = np.random.default_rng(1)
    for _ in range(50):
        t = sampler.sample(rng)
        assert t.support.shape == t.support_y.shape == (n * k,)
        assert t.query.shape == t.query_y.shape == (n * q,)
        assert not set(t.support) & set(t.query)  # no row in both sets
        assert len(set(t.support)) == n * k and len(set(t.query)) == n * q
        assert len(set(t.classes)) == n  # N distinct classes
        assert np.array_equal(np.bincount(t.support_y), np.full(n, k))
        assert np.array_equal(np.bincount(t.query_y), np.full(n, q))
        # way i is class t.classes[i]: every image carries its way's true class
        assert np.array_equal(LABELS[t.support], t.classes[t.support_y])
        assert np.array_equal(LABELS[t.query], t.classes[t.query_y])


def test_relabelling_is_in_random_order():
    sampler = EpisodeSampler(LABELS, 5, 1, 1)
    rng = np.random.default_rng(0)
    firsts = {int(sampler.sample(rng).classes[0]) for _ in range(100)}
    assert len(firsts) > 5  # label 0 is not always the smallest class of the task
    orders = [sampler.sample(rng).classes for _ in range(20)]
    assert any(not np.all(np.diff(c) > 0) for c in orders)


def test_same_seed_same_tasks_other_seed_other_tasks():
    sampler = EpisodeSampler(LABELS, 5, 1, 5)

    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sampler.sample(rng) for _ in range(10)]

    a, b, c = draw(3), draw(3), draw(4)
    for x, y in zip(a, b):
        for f in ("support", "support_y", "query", "query_y", "classes"):
            assert np.array_equal(getattr(x, f), getattr(y, f))
    assert any(not np.array_equal(x.support, z.support) for x, z in zip(a, c))


def test_global_random_state_is_neither_used_nor_changed():
    sampler = EpisodeSampler(LABELS, 5, 1, 5)
    np.random.seed(0)
    a = sampler.sample(np.random.default_rng(9))
    np.random.seed(1)
    state = np.random.get_state()[1].copy()
    b = sampler.sample(np.random.default_rng(9))
    assert np.array_equal(a.support, b.support) and np.array_equal(a.query, b.query)
    assert np.array_equal(np.random.get_state()[1], state)


def test_classes_too_small_for_the_task_are_never_drawn():
    labels = np.concatenate([np.repeat([0, 1, 2, 3, 4], 6), np.repeat([7, 8], 3)])  # 7 and 8 have 3 images
    sampler = EpisodeSampler(labels, 5, 1, 5)
    assert sorted(sampler.classes) == [0, 1, 2, 3, 4]
    rng = np.random.default_rng(0)
    assert all(set(sampler.sample(rng).classes) == {0, 1, 2, 3, 4} for _ in range(10))


def test_groups_keep_each_task_within_one_group_and_draw_each_group():
    """Labels 100-111 in groups by label: 100-105 -> 0, 106-111 -> 1 (as partitions side by side in one cache)."""
    groups = np.zeros(112, np.int64)
    groups[106:] = 1
    sampler, rng = EpisodeSampler(LABELS, 5, 1, 2, groups=groups), np.random.default_rng(0)
    seen = [set(groups[sampler.sample(rng).classes].tolist()) for _ in range(200)]
    assert all(len(g) == 1 for g in seen)  # never two groups in one task
    assert 60 < sum(g == {1} for g in seen) < 140  # each group about half the time
    # one group is the same as none: the same tasks from the same seed
    a, b = EpisodeSampler(LABELS, 5, 1, 2), EpisodeSampler(LABELS, 5, 1, 2, groups=np.zeros(112, np.int64))
    ra, rb = np.random.default_rng(3), np.random.default_rng(3)
    assert all(np.array_equal(a.sample(ra).support, b.sample(rb).support) for _ in range(10))
    groups[104:106] = 1  # group 0 now has 4 classes, too few for 5 ways
    with pytest.raises(UserError, match="5 classes of >= 3 images in every group \\(partition\\); group 0 has 4"):
        EpisodeSampler(LABELS, 5, 1, 2, groups=groups)


@pytest.mark.parametrize("n,k,q,message", [
    (13, 1, 1, "need 13 classes .* this split has 12"),  # more ways than classes
    (5, 6, 5, "need 5 classes of >= 11 images; this split has 0"),  # too few images per class
    (0, 1, 1, ">= 1"),
    (5, 0, 1, ">= 1"),
    (5, 1, 0, ">= 1"),
])
def test_impossible_settings_raise_user_error(n, k, q, message):
    with pytest.raises(UserError, match=message):
        EpisodeSampler(LABELS, n, k, q)


def test_save_and_load_round_trip(tmp_path):
    sampler = EpisodeSampler(LABELS, 5, 2, 3)
    rng = np.random.default_rng(0)
    tasks = [sampler.sample(rng) for _ in range(4)]
    path = tmp_path / "episodes.json"
    save_episodes(path, tasks, "some/split.npz", {"ways": 5, "shots": 2})
    doc = json.loads(path.read_text())
    assert doc["split"] == "some/split.npz" and doc["ways"] == 5 and len(doc["tasks"]) == 4
    loaded, extra = load_episodes(path, len(LABELS))
    assert extra == []
    for a, b in zip(tasks, loaded):
        for f in ("support", "support_y", "query", "query_y"):
            assert np.array_equal(getattr(a, f), getattr(b, f))
        assert np.array_equal(b.classes, np.arange(5))
    assert not [p for p in tmp_path.iterdir() if p.name != "episodes.json"]  # no temporary file left


def test_image_files_are_appended_after_the_split(tmp_path):
    """Relative image paths are taken from the episodes file's folder (not the working directory); absolute ones
    as they are."""
    path = tmp_path / "set" / "files.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"tasks": [{"support": [{"path": "img/a.png", "label": 0}, {"index": 3, "label": 1}],
                                           "query": [{"path": "/abs/b.png", "label": 1}]}]}))
    read = []

    def load_file(p):
        read.append(Path(p))
        return np.full((2, 2, 1), ord(Path(p).name[0]), np.uint8)

    tasks, extra = load_episodes(path, 10, load_file=load_file)
    assert read == [tmp_path / "set" / "img" / "a.png", Path("/abs/b.png")]
    assert [int(x[0, 0, 0]) for x in extra] == [ord("a"), ord("b")]
    assert tasks[0].support.tolist() == [10, 3] and tasks[0].query.tolist() == [11]
    with pytest.raises(UserError, match="cannot read"):
        load_episodes(path, 10)


def _write(tmp_path, doc):
    path = tmp_path / "bad.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _item(i, label):
    return {"index": i, "label": label}


GOOD = {"support": [_item(0, 0), _item(1, 1)], "query": [_item(2, 0), _item(3, 1)]}


@pytest.mark.parametrize("doc, message", [
    ("{not json", "not valid JSON"),
    ([1, 2], "non-empty 'tasks' list"),
    ({"tasks": []}, "non-empty 'tasks' list"),
    ({"tasks": [3]}, "task 0 is not an object"),
    ({"tasks": [{"support": GOOD["support"]}]}, "no query images"),
    ({"tasks": [{**GOOD, "query": {"0": 1}}]}, "query is not a list"),
    ({"tasks": [{**GOOD, "query": [_item(2, 0), 5]}]}, "items must be objects with an integer 'label'"),
    ({"tasks": [{**GOOD, "query": [{"index": 2}]}]}, "integer 'label'"),
    ({"tasks": [{**GOOD, "query": [{"index": 2, "label": "cat"}]}]}, "integer 'label'"),
    ({"tasks": [{**GOOD, "query": [{"index": "two", "label": 0}]}]}, "index 'two' is not an integer"),
    ({"tasks": [{**GOOD, "query": [_item(99, 0)]}]}, "index 99 outside the split"),
    ({"tasks": [{**GOOD, "query": [_item(-1, 0)]}]}, "index -1 outside the split"),
    ({"tasks": [{**GOOD, "query": [{"label": 0}]}]}, "without 'index' or 'path'"),
    ({"tasks": [{**GOOD, "query": [{"path": 5, "label": 0}]}]}, "path 5 is not a file name"),
    ({"tasks": [{**GOOD, "query": [{"path": "", "label": 0}]}]}, "path '' is not a file name"),
    ({"tasks": [{**GOOD, "query": [_item(2, 2)]}]}, "query labels absent from its support"),
    ({"tasks": [{"support": [_item(0, 1), _item(1, 2)], "query": [_item(2, 1)]}]}, "labels must be 0..N-1"),
    ({"tasks": [{**GOOD, "query": [_item(1, 1)]}]}, "both its support and query"),
    ({"tasks": [GOOD, {**GOOD, "support": []}]}, "task 1 has no support"),
])
def test_bad_episode_files_raise_user_error(tmp_path, doc, message):
    with pytest.raises(UserError, match=message):
        load_episodes(_write(tmp_path, doc), 10)


def test_missing_episode_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_episodes(tmp_path / "absent.json", 10)


def test_a_good_hand_written_file_loads(tmp_path):
    tasks, _ = load_episodes(_write(tmp_path, {"tasks": [GOOD]}), 10)
    assert isinstance(tasks[0], Task) and tasks[0].query_y.tolist() == [0, 1]


def test_saved_episodes_are_refused_on_another_split(tmp_path):
    """Row indices mean nothing on another split: a saved file names the split it indexes and is checked."""
    sampler = EpisodeSampler(LABELS, 5, 1, 2)
    rng = np.random.default_rng(0)
    path = tmp_path / "episodes.json"
    save_episodes(path, [sampler.sample(rng) for _ in range(3)], "a/split.npz", labels=LABELS)
    fp = json.loads(path.read_text())["split_fingerprint"]
    assert fp == split_fingerprint(LABELS) and fp["images"] == 120 and len(fp["labels_sha256"]) == 16
    assert len(load_episodes(path, len(LABELS), labels=LABELS, split_path="a/split.npz")[0]) == 3
    shuffled = np.random.default_rng(1).permutation(LABELS)  # as many rows, other labels
    with pytest.raises(UserError, match=r"episodes\.json: its tasks index a/split\.npz \(120 images, labels sha256 "
                                        rf"{fp['labels_sha256']}\), not b/other\.npz \(120 images"):
        load_episodes(path, len(LABELS), labels=shuffled, split_path="b/other.npz")
    with pytest.raises(UserError, match=r"\(100 images"):
        load_episodes(path, 100, labels=LABELS[:100], split_path="b/other.npz")
    # the labels' values, not their dtype, make the fingerprint
    assert split_fingerprint(LABELS.astype(np.int32)) == fp
    # a file without a fingerprint (written by hand) is taken as it is
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps({"tasks": [GOOD]}))
    assert len(load_episodes(hand, 10, labels=np.arange(10), split_path="b/other.npz")[0]) == 1


def test_the_docstring_promises_disjoint_rows_not_images():
    """Train caches repeat small clusters' images, so two rows may hold one image: only rows are disjoint."""
    import fewshot.episodes

    doc = " ".join(fewshot.episodes.__doc__.split())
    assert "no row in both" in doc and "no image in both" not in doc


def test_unlabelled_images_join_the_same_tasks():
    from fewshot.episodes import add_unlabeled, sample_tasks, tasks_sha256
    labels = np.repeat(np.arange(12), 10)
    plain = sample_tasks(labels, 5, 1, 3, n=20, seed=4)
    semi = add_unlabeled(plain, labels, per_class=4, distractors=2, seed=4)
    assert tasks_sha256(semi) == tasks_sha256(plain)
    for p, t in zip(plain, semi):
        assert (t.support == p.support).all() and (t.query == p.query).all()
        assert len(t.unlabeled) == (5 + 2) * 4 and len(np.unique(t.unlabeled)) == len(t.unlabeled)
        assert not np.intersect1d(t.unlabeled, np.concatenate([t.support, t.query])).size
        of_ways = np.isin(labels[t.unlabeled], t.classes)
        assert of_ways.sum() == 20 and len(np.unique(labels[t.unlabeled][~of_ways])) == 2
    again = add_unlabeled(plain, labels, per_class=4, distractors=2, seed=4)
    assert all((a.unlabeled == b.unlabeled).all() for a, b in zip(semi, again))


def test_too_few_images_for_the_unlabelled_ones_is_a_clear_error():
    from fewshot.episodes import add_unlabeled, sample_tasks
    labels = np.repeat(np.arange(6), 6)
    tasks = sample_tasks(labels, 5, 1, 3, n=2, seed=0)
    with pytest.raises(UserError, match="--unlabeled 3 needs 3"):
        add_unlabeled(tasks, labels, per_class=3, distractors=0, seed=0)
    with pytest.raises(UserError, match="2 distractor classes"):
        add_unlabeled(tasks, labels, per_class=2, distractors=2, seed=0)
