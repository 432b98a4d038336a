"""maml.train: a run killed mid-way (SIGKILL) and resumed equals an uninterrupted one bit for bit (PEM on), PEM
adapts the evaluation model of the previous epoch's end, the caches come from encode.json or explicit options, the
train cache's true labels are not needed, the first-order option trains, and best.pt holds the epoch of highest
val accuracy. Bad input: test_train_inputs.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import maml.pem
from fewshot import checkpoint
from fewshot.data import load_split, write_split
from fewshot.errors import UserError
from fewshot.io import read_jsonl, save_npz
from fewshot.runtime import seed_everything
from maml import train as maml_train
from maml.maml import MAMLNet
from maml.selection import budget_snapshot
from tests.conftest import assert_same, file_bytes, files_under, run_and_kill
from tests.maml.conftest import write_encode_json

SIDE, N_CLUSTERS, PER_CLUSTER = 16, 10, 12


def toy_caches(root: Path, seed=0) -> dict:
    """Pseudo-labelled train cache + centres and a labelled val cache, which root/encode.json names as cfe.encode
    does ("dir": root). Images are a class prototype plus noise, so there is something to learn."""
    rng = np.random.default_rng(seed)

    def images(n_classes, per_class):
        protos = rng.integers(0, 256, size=(n_classes, SIDE, SIDE, 1))
        y = np.repeat(np.arange(n_classes), per_class)
        x = np.clip(protos[y] + rng.normal(0, 40, size=(len(y), SIDE, SIDE, 1)), 0, 255).astype(np.uint8)
        return x, y

    x, pseudo = images(N_CLUSTERS, PER_CLUSTER)
    true = rng.permutation(len(pseudo)) % 7  # hidden truth: never read by maml.train (a cache without it trains)
    paths = {"train": root / "a_train.npz", "val": root / "a_val.npz", "clusters": root / "a_centres.npz"}
    write_split(paths["train"], x, true, cluster_label=pseudo, index=np.arange(len(x)))
    save_npz(paths["clusters"], cluster_centers=rng.normal(size=(N_CLUSTERS, 8)).astype(np.float32))
    xv, yv = images(6, 8)
    write_split(paths["val"], xv, yv + 100, cluster_label=yv + 100)
    write_encode_json(root, train="a_train.npz", val="a_val.npz", train_clusters="a_centres.npz")
    return {**paths, "dir": root}


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return toy_caches(tmp_path_factory.mktemp("toy"))


def cache_args(caches) -> list:
    """--caches DIR when `caches` has a "dir", else the explicit caches it names (train, and val, clusters)."""
    if "dir" in caches:
        return ["--caches", caches["dir"]]
    named = [("--train-cache", "train"), ("--val-cache", "val"), ("--centres", "clusters")]
    return [a for option, key in named if caches.get(key) for a in (option, caches[key])]


SMALL = ["--epochs", "3", "--batches-per-epoch", "3", "--meta-batch", "2", "--hidden", "8", "--pem-warmup", "1",
         "--pem-eta", "0", "--val-tasks", "5", "--val-steps", "1", "--threads", "1", "--device", "cpu"]


def run(caches, out, *extra):
    maml_train.main([*map(str, cache_args(caches)), "--out", str(out), *SMALL, *map(str, extra)])


def load(out, name="last"):
    return torch.load(Path(out) / "checkpoints" / f"{name}.pt", map_location="cpu", weights_only=True)


def init_state(hidden=8, n_way=5, seed=0):
    seed_everything(seed)
    return MAMLNet(1, hidden, SIDE, n_way).state_dict()


@pytest.fixture(scope="module")
def straight(caches, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    run(caches, out)
    return out


KILL_RUN = ["--epochs", "12", "--batches-per-epoch", "2", "--meta-batch", "2", "--hidden", "8", "--pem-warmup", "2",
            "--pem-eta", "0.5", "--val-tasks", "3", "--val-steps", "1", "--save-every", "0", "--threads", "1",
            "--device", "cpu"]


def test_a_run_killed_mid_run_resumes_to_the_uninterrupted_result(caches, tmp_path):
    """A real interruption: `python -m maml.train` is SIGKILLed (no chance to clean up) as soon as its first
    last.pt exists, with epochs left to run; `--resume` then ends where an uninterrupted run ends, bit for bit."""
    argv = [*map(str, cache_args(caches)), *KILL_RUN]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    maml_train.main([*argv, "--out", str(whole)])
    run_and_kill("maml.train", [*argv, "--out", killed], killed / "checkpoints" / "last.pt")  # killed, not finished
    at_kill = load(killed)["epoch"]
    assert 1 <= at_kill < 12
    maml_train.main([*argv, "--out", str(killed), "--resume"])
    a, b = load(whole), load(killed)
    assert a["epoch"] == b["epoch"] == 12
    for key in ("model", "eval_model", "optimizer", "best_acc", "arch", "selection"):
        assert_same(a[key], b[key], key)
    for key in ("model", "eval_model", "epoch", "best_acc"):  # (config and provenance name other paths)
        assert_same(load(whole, "best")[key], load(killed, "best")[key], f"best/{key}")
    rows_a, rows_b = read_jsonl(whole / "metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")
    assert [r["epoch"] for r in rows_b] == list(range(1, 13))
    for ra, rb in zip(rows_a, rows_b):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb
    assert not list(killed.rglob("*.tmp"))  # what the kill left half-written is gone
    invocations = read_jsonl(killed / "invocations.jsonl")
    assert [i["resumed"] for i in invocations] == [False, True]


def test_a_shorter_run_grows_its_epochs_on_resume_to_the_longer_runs_result(caches, straight, tmp_path):
    out = tmp_path / "run"
    run(caches, out, "--epochs", 1)
    assert load(out)["epoch"] == 1 and len(read_jsonl(out / "metrics.jsonl")) == 1
    run(caches, out, "--resume")
    a, b = load(straight), load(out)
    assert a["epoch"] == b["epoch"] == 3
    for key in ("model", "eval_model", "optimizer", "best_acc", "arch", "selection"):
        assert_same(a[key], b[key], key)
    rows = read_jsonl(straight / "metrics.jsonl")
    # PEM really ran after the warm-up: with eta 0 every meta-batch of epochs 2 and 3 was rebuilt
    assert [r["pem_rebuilt_batches"] for r in rows] == [0, 3, 3]
    # the eval model is the model as it was at the end of the last epoch, and training moved it from the init
    assert_same(a["model"], a["eval_model"])
    assert any(not torch.equal(v, a["model"][k]) for k, v in init_state().items())


def test_a_run_killed_while_saving_resumes_to_the_uninterrupted_result(caches, straight, tmp_path, monkeypatch):
    """Killed inside an epoch's writes (after metrics.jsonl and maybe best.pt, before last.pt), not at a clean
    epoch boundary: the resume redoes that epoch from the previous last.pt, logs it once and ends as a whole run."""
    out, save = tmp_path / "run", checkpoint.save_checkpoint  # what save_epoch calls

    def killed_at_epoch_2s_last_pt(path, kind, **state):
        if path.name == "last.pt" and state["epoch"] == 2:
            raise KeyboardInterrupt
        save(path, kind, **state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", killed_at_epoch_2s_last_pt)
    with pytest.raises(KeyboardInterrupt):
        run(caches, out)
    assert load(out)["epoch"] == 1 and [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    run(caches, out, "--resume")
    for name in ("last", "best"):
        a, b = load(straight, name), load(out, name)
        assert a.keys() == b.keys()
        for key in a.keys() - {"config", "provenance"}:  # (config and provenance name other paths)
            assert_same(a[key], b[key], f"{name}/{key}")
    rows_a, rows_b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows_b] == [1, 2, 3]
    for ra, rb in zip(rows_a, rows_b):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb


def test_pem_adapts_the_evaluation_model_of_the_previous_epochs_end(caches, tmp_path, monkeypatch):
    """During epoch e every PEM adaptation starts from the weights the model had at the end of epoch e-1 (the
    initialisation in epoch 1), not from the live model, which moves after every meta-batch."""
    events, adapt, meta_loss = [], maml.pem.adapt, maml_train.meta_loss

    def recording_adapt(model, params, *args, **kwargs):  # in maml.pem, only the evaluation model is adapted
        events.append(("eval", {n: p.detach().clone() for n, p in params.items()}))
        return adapt(model, params, *args, **kwargs)

    def recording_meta_loss(model, *args, **kwargs):
        events.append(("live", {n: p.detach().clone() for n, p in model.named_parameters()}))
        return meta_loss(model, *args, **kwargs)

    monkeypatch.setattr(maml.pem, "adapt", recording_adapt)
    monkeypatch.setattr(maml_train, "meta_loss", recording_meta_loss)
    out = tmp_path / "run"
    run(caches, out, "--pem-warmup", 0, "--save-every", 1)  # eta 0: PEM rebuilds every meta-batch from epoch 1
    # 3 epochs x 3 meta-batches, each: one adaptation per task (meta-batch 2), then the meta-loss of the live model
    assert [kind for kind, _ in events] == ["eval", "eval", "live"] * 9
    ends = [init_state(), load(out, "epoch_0001")["model"], load(out, "epoch_0002")["model"]]
    for batch in range(9):
        epoch, live = batch // 3, events[3 * batch + 2][1]
        for _, used in events[3 * batch: 3 * batch + 2]:
            assert used.keys() == live.keys()
            assert_same(used, {n: ends[epoch][n] for n in used}, f"meta-batch {batch % 3} of epoch {epoch + 1}")
            if batch % 3:  # the live model has trained on since the epoch began: the check tells the two apart
                assert any(not torch.equal(used[n], live[n]) for n in used)


def test_a_train_cache_without_true_labels_trains_with_pem(caches, straight, tmp_path):
    """Training reads the train cache's X and cluster_label only: a cache without Y trains (PEM on), and to the
    very weights of the run whose cache has Y."""
    train = load_split(caches["train"])
    bare = dict(train=tmp_path / "bare.npz", val=caches["val"], clusters=caches["clusters"])
    save_npz(bare["train"], X=train.X, cluster_label=train.cluster_label, index=train.index)
    assert "Y" not in np.load(bare["train"]).files
    run(bare, tmp_path / "run")
    a, b = load(straight), load(tmp_path / "run")
    for key in ("model", "eval_model", "optimizer", "best_acc", "epoch"):
        assert_same(a[key], b[key], key)
    assert [r["pem_rebuilt_batches"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [0, 3, 3]


def test_pem_changes_the_training(caches, straight, tmp_path):
    """Without PEM the run ends elsewhere: PEM's rebuilt queries are what the resume test had to reproduce."""
    out = tmp_path / "nopem"
    run(caches, out, "--no-pem")
    assert not torch.equal(load(out)["model"]["classifier.weight"], load(straight)["model"]["classifier.weight"])
    assert [r["pem_rebuilt_batches"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 0, 0]


def test_first_order_trains_and_differs_from_second_order(caches, straight, tmp_path):
    out = tmp_path / "fo"
    run(caches, out, "--first-order", "--epochs", "1", "--no-pem")
    ckpt = load(out)
    assert ckpt["config"]["first_order"] is True
    init = init_state()
    changed = [k for k, v in init.items() if not torch.equal(v, ckpt["model"][k])]
    # every conv weight and the classifier moved (FOMAML's gradient reaches the initialisation)
    assert {"classifier.weight", "classifier.bias", "features.blocks.0.0.weight"} <= set(changed)
    so = tmp_path / "so"
    run(caches, so, "--epochs", "1", "--no-pem")
    assert not torch.equal(load(so)["model"]["classifier.weight"], ckpt["model"]["classifier.weight"])


def contents(root) -> tuple:
    """Every file below root: names, sizes and times (files_under), and bytes."""
    return files_under(root), file_bytes(root)


def test_resume_with_changed_settings_is_refused_and_leaves_the_run_as_it_was(caches, straight, tmp_path):
    out = tmp_path / "run"
    run(caches, out, "--epochs", 1)
    before = contents(out)
    assert {"config.json", "invocations.jsonl", "metrics.jsonl", "checkpoints/last.pt"} <= before[1].keys()
    with pytest.raises(UserError, match="inner_lr"):
        run(caches, out, "--resume", "--inner-lr", "0.2")
    assert contents(out) == before
    with pytest.raises(UserError, match="already holds a run"):
        run(caches, out)
    assert contents(out) == before


def test_validation_adapts_with_the_training_steps_unless_told(caches, tmp_path):
    """As upstream (train_un_maml_pem.py), val tasks are adapted with --inner-steps unless --val-steps is given."""
    common = ["--caches", str(caches["dir"]), "--epochs", "1",
              "--batches-per-epoch", "1", "--meta-batch", "1", "--hidden", "8", "--val-tasks", "2", "--no-pem",
              "--threads", "1", "--device", "cpu"]
    maml_train.main([*common, "--out", str(tmp_path / "a"), "--inner-steps", "2"])
    assert json.loads((tmp_path / "a" / "config.json").read_text())["val_steps"] == 2
    maml_train.main([*common, "--out", str(tmp_path / "b"), "--val-steps", "7"])
    assert json.loads((tmp_path / "b" / "config.json").read_text())["val_steps"] == 7


def test_supervised_baseline_trains_on_the_true_labels(caches, tmp_path):
    """--supervised is the pseudo-label run on a cache whose cluster labels are the true ones, bit for bit."""
    train = load_split(caches["train"])
    relabelled = dict(train=tmp_path / "truth.npz", val=caches["val"])
    write_split(relabelled["train"], train.X, train.Y, cluster_label=train.Y)
    run({"train": caches["train"], "val": caches["val"]}, tmp_path / "sup", "--supervised", "--no-pem")
    run(relabelled, tmp_path / "ref", "--no-pem")
    assert_same(load(tmp_path / "sup")["model"], load(tmp_path / "ref")["model"])
    run(caches, tmp_path / "pseudo", "--no-pem")
    assert not torch.equal(load(tmp_path / "sup")["model"]["classifier.weight"],
                           load(tmp_path / "pseudo")["model"]["classifier.weight"])


def snapshots(out):
    return sorted(p.name for p in (Path(out) / "checkpoints").glob("epoch_*.pt"))


def test_snapshots_are_what_a_shorter_run_ends_with(caches, straight, tmp_path):
    """--save-every keeps checkpoints/epoch_NNNN.pt. Epochs draw their tasks from (seed, epoch) and Adam's rate is
    constant, so a longer run's snapshot at epoch 2 is the model a 2-epoch run ends with: shorter budgets can be
    tested from one long run."""
    assert snapshots(straight) == []  # the default keeps one every 10 epochs
    long, short = tmp_path / "long", tmp_path / "short"
    run(caches, long, "--save-every", 2)
    run(caches, short, "--epochs", 2, "--save-every", 0)
    assert snapshots(long) == ["epoch_0002.pt"] and snapshots(short) == []
    snap = load(long, "epoch_0002")
    assert snap["epoch"] == 2
    for key in ("model", "eval_model", "optimizer", "best_acc"):
        assert_same(snap[key], load(short)[key], key)
    # snapshots change no result, so a run may be resumed with another interval
    mid = tmp_path / "mid"
    run(caches, mid, "--epochs", 1, "--save-every", 0)
    run(caches, mid, "--resume", "--save-every", 1)
    assert snapshots(mid) == ["epoch_0002.pt", "epoch_0003.pt"]
    assert_same(load(mid)["model"], load(straight)["model"])


def test_best_is_the_epoch_of_highest_val_accuracy_the_later_on_ties(caches, tmp_path, monkeypatch):
    """best.pt holds the model of the epoch with the highest val accuracy; of equal ones, the later (the later model
    has meta-trained longer)."""
    val_accs = iter([0.5, 0.7, 0.7, 0.6])
    monkeypatch.setattr(maml_train, "evaluate", lambda *args: np.full(5, next(val_accs)))
    out = tmp_path / "run"
    run(caches, out, "--epochs", 4, "--save-every", 1)
    assert [row["val_acc"] for row in read_jsonl(out / "metrics.jsonl")] == pytest.approx([0.5, 0.7, 0.7, 0.6])
    best = load(out, "best")
    assert best["epoch"] == 3 and best["best_acc"] == pytest.approx(0.7)
    assert_same(best["model"], load(out, "epoch_0003")["model"])
    # maml.test --checkpoint best@N makes the same choice among the first N epochs (shorter budgets, one run)
    cfg = json.loads((out / "config.json").read_text())
    chosen = [budget_snapshot(out, cfg, n) for n in (1, 2, 3, 4)]
    assert [epoch for _, epoch in chosen] == [1, 2, 3, 3]
    assert [path.name for path, _ in chosen] == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt", "epoch_0003.pt"]


def test_the_caches_come_from_encode_json_or_explicit_options_alike(caches, straight, tmp_path):
    """--caches DIR trains on the caches its encode.json names (whatever their file names), as the same caches
    named one by one do; config.json records the resolved caches, for maml.test."""
    explicit = {k: caches[k] for k in ("train", "val", "clusters")}
    run(explicit, tmp_path / "explicit", "--test-cache", tmp_path / "t.npz")
    assert_same(load(straight)["model"], load(tmp_path / "explicit")["model"])
    cfg = json.loads((straight / "config.json").read_text())
    assert {k: cfg[k] for k in ("caches", "train_cache", "val_cache", "test_cache", "centres", "dataset")} == {
        "caches": str(caches["dir"]), "train_cache": str(caches["train"]), "val_cache": str(caches["val"]),
        "test_cache": None, "centres": str(caches["clusters"]), "dataset": "toy"}
    cfg = json.loads((tmp_path / "explicit" / "config.json").read_text())
    assert (cfg["caches"], cfg["test_cache"], cfg["dataset"]) == (None, str(tmp_path / "t.npz"), None)
