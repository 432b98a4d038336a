"""No training step reads the train split's true labels: replacing them changes nothing but the diagnostics.

The chain cfe.train -> cfe.encode -> maml.train (PEM on) and ep.train (both stages), and its variant with
neighbour smoothing and two k-means partitions (cfe.encode --knn-smooth 2 --partitions 2), runs on copies of a
small dataset that differ only in the train split's labels Y: the true ones, a permutation of them, and random
labels of another number of classes and other class sizes. So do the other task constructions of the comparison
table, up to their caches: k-means of a MoCo-loss embedding (cfe.train --loss moco), of the raw pixels (cfe.encode
--labels pixels) and random labels (--labels random, two partitions). Two datasets: synthetic 28x28 grey strokes
written as caches directly (Conv4 on Omniglot's path, Omniglot's augmentation), and a folder of PNG files of coloured
shapes prepared by `python -m fewshot.datasets imagefolder` into 84x84 RGB caches (the ImageNet path: MoCo v2's
colour augmentation, cfe.colour).
Weights, pseudo-labels and the MAML+PEM and EP models must be bit-identical; the pseudo-label quality reported
against the (different) truth must differ.

The one construction that does read them, --labels oracle (supervised: the ceiling), must follow them, say so in
encode.json and every cache, and be refused unless named with --supervised too.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cfe import encode as cfe_encode
from cfe import train as cfe_train
from ep import train as ep_train
from fewshot import datasets
from fewshot.data import SPLITS, load_array, load_split, prepared_path, write_split
from maml import train as maml_train
from protonet import train as protonet_train
from tests.conftest import assert_same

SIDE, K, DIM = 28, 10, 16  # the synthetic images' side; k-means clusters and embedding dimension of both cases


@dataclass(frozen=True)
class Case:
    """A dataset the chain runs on: the name of its caches ({name}_cache_{split}.npz), the shape of its images, and
    cfe.train's epochs, batch and queue for it (4 BatchNorm splits, the default, in both)."""

    name: str
    shape: tuple
    cfe_epochs: int
    batch_size: int
    queue_size: int


CASES = {"synthetic": Case("leak", (SIDE, SIDE, 1), 2, 64, 256),
         "imagefolder": Case("imagefolder", (84, 84, 3), 1, 16, 64)}  # fewshot.imagefolder.SIDE


def synthetic_splits(seed=0) -> dict:
    """Classes of white strokes on black: each class a random set of bars, each image it shifted and noised."""
    rng = np.random.default_rng(seed)

    def split(first_label, n_classes, per_class):
        X, Y = [], []
        for c in range(n_classes):
            proto = np.zeros((SIDE, SIDE))
            for _ in range(4):
                r, col = rng.integers(4, SIDE - 4, size=2)
                if rng.random() < 0.5:
                    proto[r - 1:r + 1, max(col - 6, 0):col + 6] = 255
                else:
                    proto[max(r - 6, 0):r + 6, col - 1:col + 1] = 255
            for _ in range(per_class):
                img = np.roll(proto, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
                X.append(np.clip(img + rng.normal(0, 20, size=img.shape), 0, 255).astype(np.uint8))
                Y.append(first_label + c)
        order = rng.permutation(len(Y))
        return np.stack(X)[order][..., None], np.array(Y, dtype=np.int64)[order]

    return {"train": split(0, 20, 20), "val": split(100, 6, 10), "test": split(200, 6, 10)}


def image_folder(root: Path, seed=0) -> Path:
    """root/{train,val,test}/classNN/N.png: 10 train classes of 8 images, 5 val and 5 test classes of 6, 40x40 RGB
    (the reader resizes them to 84x84). A class is one of 4 shapes in a hue of its own (hues 0.38 turn apart); each
    image moves, resizes and tints it on a dark background. Class names are not WordNet ids, so no list of classes to
    exclude can name them."""
    rng = np.random.default_rng(seed)
    sizes = {"train": (10, 8), "val": (5, 6), "test": (5, 6)}
    c = 0
    for split, (n_classes, per_class) in sizes.items():
        for _ in range(n_classes):
            shape = ("ellipse", "rectangle", "triangle", "cross")[c % 4]
            hue = Image.new("HSV", (1, 1), (int(c * 0.38 % 1 * 255), 220, 230)).convert("RGB").getpixel((0, 0))
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = Image.new("RGB", (40, 40), (int(rng.integers(10, 40)),) * 3)
                draw = ImageDraw.Draw(img)
                (x, y), r = rng.integers(17, 24, 2), int(rng.integers(11, 15))
                fill = tuple(int(v) for v in np.clip(np.array(hue) + rng.integers(-15, 16, 3), 0, 255))
                if shape == "ellipse":
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
                elif shape == "rectangle":
                    draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=fill)
                elif shape == "triangle":
                    draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
                else:
                    draw.rectangle((x - r, y - 3, x + r, y + 3), fill=fill)
                    draw.rectangle((x - 3, y - r, x + 3, y + r), fill=fill)
                img.save(folder / f"{i}.png")
            c += 1
    return root


def imagefolder_splits(root: Path) -> dict:
    """The image folder prepared by `python -m fewshot.datasets imagefolder`: {split: (X, Y)} of its caches."""
    out = root / "prepared"
    datasets.main(["imagefolder", "--source", str(image_folder(root / "images")), "--out", str(out)])
    splits = {}
    for s in SPLITS:
        split = load_split(prepared_path(out, "imagefolder", s))
        splits[s] = split.X, split.Y
    assert {s: X.shape for s, (X, _) in splits.items()} == \
        {"train": (80, 84, 84, 3), "val": (30, 84, 84, 3), "test": (30, 84, 84, 3)}
    assert [len(np.unique(Y)) for _, Y in splits.values()] == [10, 5, 5]
    return splits


def encoded(case: Case, caches: Path, dim=DIM) -> dict:
    """{train, val, test, train_clusters, train_emb: path} as cfe.encode's encode.json names them."""
    doc = json.loads((caches / "encode.json").read_text())
    assert doc["dataset"] == case.name and doc["dim"] == dim and doc["clusters"] == K
    assert set(doc["caches"]) == {"train", "val", "test", "train_clusters", "train_emb"}
    return {s: caches / name for s, name in doc["caches"].items()}


# the other rows of the comparison table, up to their caches: {name: (cfe.train --loss or None, cfe.encode options)}
OTHER_LABELS = {"-moco": ("moco", []), "-pixels": (None, ["--labels", "pixels"]),
                "-random": (None, ["--labels", "random", "--partitions", "2"])}


def pipeline(case: Case, data: Path, runs: Path) -> dict:
    """cfe.train (4 BatchNorm splits, the default), then twice cfe.encode -> maml.train --caches (PEM on):
    plain, and with --knn-smooth 2 --partitions 2 ("-p2"); then the caches of OTHER_LABELS. Returns {"": caches,
    "-p2": caches, "-moco": ...} (see encoded)."""
    common = ["--threads", "1", "--device", "cpu", "--seed", "3"]
    for name, loss in (("cfe", "cfe"), ("cfe-moco", "moco")):
        cfe_train.main(["--data", str(prepared_path(data, case.name, "train")), "--out", str(runs / name),
                        "--epochs", str(case.cfe_epochs), "--batch-size", str(case.batch_size),
                        "--queue-size", str(case.queue_size), "--hidden", "16", "--dim", str(DIM), "--loss", loss,
                        *common])
    caches = {}
    for name, extra in (("", []), ("-p2", ["--knn-smooth", "2", "--partitions", "2"])):
        cfe_encode.main(["--checkpoint", str(runs / "cfe/checkpoints/last.pt"), "--data-dir", str(data),
                         "--dataset", case.name, "--out", str(runs / f"caches{name}"), "--clusters", str(K),
                         "--min-cluster-size", "20", "--niter", "20", *extra, *common])
        caches[name] = encoded(case, runs / f"caches{name}")
        maml_train.main(["--caches", str(runs / f"caches{name}"), "--out", str(runs / f"maml{name}"),
                         "--epochs", "2", "--batches-per-epoch", "3", "--meta-batch", "2", "--hidden", "8",
                         "--pem-warmup", "0", "--pem-eta", "0", "--pem-candidates", "3",
                         "--val-tasks", "5", "--val-steps", "1", *common])
    ep_train.main(["--caches", str(runs / "caches"), "--out", str(runs / "ep"), "--pretrain-epochs", "1",
                   "--finetune-epochs", "1", "--batch-size", "64", "--tasks-per-epoch", "3", "--queries", "3",
                   "--val-tasks", "3", "--hidden", "8", *common])
    protonet_train.main(["--caches", str(runs / "caches"), "--out", str(runs / "protonet"), "--epochs", "2",
                         "--tasks-per-epoch", "3", "--queries", "3", "--val-tasks", "3", "--hidden", "8", *common])
    for name, (loss, extra) in OTHER_LABELS.items():
        source = ["--checkpoint", str(runs / f"cfe-{loss}/checkpoints/last.pt")] if loss else []
        cfe_encode.main([*source, "--data-dir", str(data), "--dataset", case.name,
                         "--out", str(runs / f"caches{name}"), "--clusters", str(K), "--min-cluster-size", "20",
                         "--niter", "20", *extra, *common])
        caches[name] = encoded(case, runs / f"caches{name}", DIM if loss else int(np.prod(case.shape)))
    return caches


def ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict, what: str):
    """Equal keys and bit-identical tensors, nested dicts and lists (optimizer states) included."""
    assert isinstance(a, dict) and a, f"{what}: nothing to compare"
    assert_same(a, b, what)


def run_copy(case: Case, root: Path, splits: dict, train_y: np.ndarray) -> tuple:
    """The chain on a copy of `splits` whose train labels are `train_y`: (its runs folder, its caches)."""
    data = root / "data"
    for s, (X, Y) in splits.items():
        write_split(prepared_path(data, case.name, s), X, train_y if s == "train" else Y)
    return root / "runs", pipeline(case, data, root / "runs")


@pytest.fixture(scope="module", params=list(CASES))
def true_run(request, tmp_path_factory):
    """(case, its splits, the chain on the true labels), once per case for all the ways of replacing them."""
    case = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    splits = synthetic_splits() if request.param == "synthetic" else imagefolder_splits(root)
    assert splits["train"][0].shape[1:] == case.shape
    return case, splits, run_copy(case, root / "true", splits, splits["train"][1])


def replaced_labels(true_y: np.ndarray, how: str) -> np.ndarray:
    if how == "permuted":
        y = np.random.default_rng(1).permutation(true_y)
        assert (y != true_y).mean() > 0.5
    else:  # 3 classes of uneven sizes instead of 20 of 20 (or 10 of 8), still disjoint from the val and test
        # labels (synthetic: 100-105 and 200-205; imagefolder: 10-14 and 15-19)
        y = 1000 + np.random.default_rng(1).integers(0, 3, len(true_y))
        assert len(np.unique(y)) == 3 != len(np.unique(true_y))
        assert len(set(np.bincount(y - 1000))) > 1  # sizes differ from class to class
    return y


# a permutation keeps the number of classes and their sizes, so it cannot catch a leak such as K = len(unique(Y));
# labels of another number of classes and other sizes can
@pytest.mark.parametrize("how", ["permuted", "other classes"])
def test_replacing_train_labels_changes_nothing_but_diagnostics(true_run, tmp_path, how):
    """Not marked slow (on one thread about 10 s for the synthetic case, 20 s for the image folder): it is the one
    proof that training never reads the train split's truth, on grey and on colour images."""
    case, splits, (a, caches_a) = true_run
    b, caches_b = run_copy(case, tmp_path, splits, replaced_labels(splits["train"][1], how))
    ca, cb = caches_a[""], caches_b[""]

    # CFE: final weights (and queue), optimizer and schedule state
    ka, kb = ckpt(a / "cfe/checkpoints/last.pt"), ckpt(b / "cfe/checkpoints/last.pt")
    assert_same_state(ka["model"], kb["model"], "cfe model")
    assert_same_state(ka["optimizer"], kb["optimizer"], "cfe optimizer")
    assert_same_state(ka["scheduler"], kb["scheduler"], "cfe scheduler")
    assert ka["optimizer"]["state"], "no momentum buffers to compare"
    assert ka["arch"]["bn_splits"] == 4  # the default: one loss per BatchNorm split
    # the images' shape: 3 channels take MoCo v2's colour views (cfe.colour), 1 Omniglot's
    assert (ka["arch"]["image_size"], ka["arch"]["in_channels"]) == (case.shape[0], case.shape[2])
    assert ka["config"]["image_shape"] == list(case.shape)
    assert ka["epoch"] == kb["epoch"] == case.cfe_epochs

    # pseudo-labels: images, cluster labels and source rows of the train cache; centres; embeddings
    ta, tb = load_split(ca["train"]), load_split(cb["train"])
    for key in ("X", "cluster_label", "index"):
        assert np.array_equal(getattr(ta, key), getattr(tb, key)), key
    assert not np.array_equal(ta.Y, tb.Y)  # the caches do carry the (different) true labels
    assert len(np.unique(ta.cluster_label)) > 1
    assert np.array_equal(load_array(ca["train_clusters"], "cluster_centers"),
                          load_array(cb["train_clusters"], "cluster_centers"))
    assert np.array_equal(load_array(ca["train_emb"], "Z"), load_array(cb["train_emb"], "Z"))
    for s in ("val", "test"):
        va, vb = load_split(ca[s]), load_split(cb[s])
        assert np.array_equal(va.X, vb.X) and np.array_equal(va.cluster_label, vb.cluster_label)

    # MAML + PEM (PEM rebuilt every meta-batch: warm-up 0, eta 0), on the caches encode.json names
    ma, mb = ckpt(a / "maml/checkpoints/last.pt"), ckpt(b / "maml/checkpoints/last.pt")
    assert ma["config"]["train_cache"] == str(ca["train"]) and ma["config"]["centres"] == str(ca["train_clusters"])
    assert ma["config"]["val_cache"] == str(ca["val"])
    assert_same_state(ma["model"], mb["model"], "maml model")
    assert_same_state(ma["eval_model"], mb["eval_model"], "maml eval model")
    assert_same_state(ma["optimizer"], mb["optimizer"], "maml optimizer")
    assert ma["best_acc"] == mb["best_acc"]
    rows = [json.loads(line) for line in (a / "maml/metrics.jsonl").read_text().splitlines()]
    assert [r["pem_rebuilt_batches"] for r in rows] == [3, 3]

    # EP, pre-trained on the pseudo-labels then fine-tuned on their tasks
    ea, eb = ckpt(a / "ep/checkpoints/last.pt"), ckpt(b / "ep/checkpoints/last.pt")
    assert ea["stage"] == "finetune" and ea["arch"]["classes"] == K and ea["epoch"] == 2
    assert_same_state(ea["model"], eb["model"], "ep model")
    assert_same_state(ea["optimizer"], eb["optimizer"], "ep optimizer")
    assert ea["best_acc"] == eb["best_acc"]

    # ProtoNets, trained on the pseudo-labels' tasks
    pna, pnb = ckpt(a / "protonet/checkpoints/last.pt"), ckpt(b / "protonet/checkpoints/last.pt")
    assert pna["epoch"] == 2 and pna["config"]["learner"] == "protonet"
    assert_same_state(pna["model"], pnb["model"], "protonet model")
    assert_same_state(pna["optimizer"], pnb["optimizer"], "protonet optimizer")
    assert pna["best_acc"] == pnb["best_acc"]

    # the variant: smoothed embedding, two partitions side by side in the train cache, MAML + PEM on them
    pa, pb = (np.load(c["-p2"]["train"]) for c in (caches_a, caches_b))
    for key in ("X", "cluster_label", "index", "partition"):
        assert np.array_equal(pa[key], pb[key]), key
    assert set(pa["partition"].tolist()) == {0, 1} and not np.array_equal(pa["Y"], pb["Y"])
    assert np.array_equal(load_array(caches_a["-p2"]["train_clusters"], "cluster_centers"),
                          load_array(caches_b["-p2"]["train_clusters"], "cluster_centers"))
    ma, mb = ckpt(a / "maml-p2/checkpoints/last.pt"), ckpt(b / "maml-p2/checkpoints/last.pt")
    assert ma["config"]["train_cache"] == str(caches_a["-p2"]["train"])
    assert_same_state(ma["model"], mb["model"], "maml model (partitions)")
    assert_same_state(ma["eval_model"], mb["eval_model"], "maml eval model (partitions)")
    rows = [json.loads(line) for line in (a / "maml-p2/metrics.jsonl").read_text().splitlines()]
    assert [r["pem_rebuilt_batches"] for r in rows] == [3, 3]

    # the other rows of the table: the MoCo-loss embedding, then each construction's caches
    ka, kb = ckpt(a / "cfe-moco/checkpoints/last.pt"), ckpt(b / "cfe-moco/checkpoints/last.pt")
    assert ka["arch"]["loss"] == "moco" and ka["arch"]["bn_splits"] == 4
    assert_same_state(ka["model"], kb["model"], "cfe model (moco loss)")
    assert_same_state(ka["optimizer"], kb["optimizer"], "cfe optimizer (moco loss)")
    for name in OTHER_LABELS:
        assert_same_caches(caches_a[name], caches_b[name], name)
    assert json.loads((a / "caches-moco/encode.json").read_text())["embedding_loss"] == "moco"

    # only the diagnostics differ, and they must: the labels really were changed
    qa = json.loads((a / "caches/encode.json").read_text())["pseudo_label_quality"]
    qb = json.loads((b / "caches/encode.json").read_text())["pseudo_label_quality"]
    assert qa["clusters"] == qb["clusters"]
    assert qa["ari"] != qb["ari"] and qa["nmi"] != qb["nmi"]
    assert qa["nmi"] > qb["nmi"]  # clusters of the embedding follow the true classes, not the random labels


def assert_same_caches(ca: dict, cb: dict, name: str):
    """Two runs' caches (see encoded) hold the same images, pseudo-labels, rows, partitions, centres and features;
    the train caches carry their own (different) true labels."""
    ta, tb = np.load(ca["train"]), np.load(cb["train"])
    assert set(ta.files) == set(tb.files)
    for key in {"X", "cluster_label", "index", "partition"} & set(ta.files):
        assert np.array_equal(ta[key], tb[key]), (name, key)
    assert not np.array_equal(ta["Y"], tb["Y"]), name
    assert len(np.unique(ta["cluster_label"])) > 1, name
    for what, key in (("train_clusters", "cluster_centers"), ("train_emb", "Z"), ("train_emb", "cluster_label")):
        assert np.array_equal(load_array(ca[what], key), load_array(cb[what], key)), (name, what, key)
    for s in ("val", "test"):
        va, vb = load_split(ca[s]), load_split(cb[s])
        assert np.array_equal(va.X, vb.X) and np.array_equal(va.cluster_label, vb.cluster_label), (name, s)


def oracle_argv(data: Path, out: Path, *extra) -> list:
    return ["--labels", "oracle", "--data-dir", str(data), "--dataset", "leak", "--out", str(out),
            "--min-cluster-size", "20", "--device", "cpu", "--threads", "1", *extra]


def test_oracle_labels_are_the_true_labels_marked_supervised_and_refused_without_supervised(tmp_path, run_main):
    """--labels oracle --supervised: the train cache's pseudo-labels are its true labels (relabelled 0.. in order of
    value), so they change with them; K is the number of true classes; encode.json and every cache say
    "supervised": true. Named without --supervised it is a one-line error (exit 2) that writes nothing."""
    splits = synthetic_splits()
    true_y = splits["train"][1]
    runs = {}
    for how, train_y in (("true", true_y), ("permuted", replaced_labels(true_y, "permuted"))):
        data = tmp_path / how / "data"
        for s, (X, Y) in splits.items():
            write_split(prepared_path(data, "leak", s), X, train_y if s == "train" else Y)
        out = tmp_path / how / "caches"
        r = run_main("cfe.encode", oracle_argv(data, out, "--supervised"))
        assert r.code == 0 and "supervised" in r.out, r.err
        doc = json.loads((out / "encode.json").read_text())
        assert doc["labels"] == "oracle" and doc["supervised"] is True and doc["clusters"] == 20
        assert doc["dim"] == SIDE * SIDE and doc["quality_at_true_k"] is None
        assert doc["pseudo_label_quality"]["ari"] == 1.0
        paths = {s: out / name for s, name in doc["caches"].items()}
        for s in ("train", "val", "test"):
            assert load_split(paths[s]).meta["supervised"] is True, s
        for what in ("train_clusters", "train_emb"):
            assert json.loads(str(load_array(paths[what], "meta")))["supervised"] is True, what
        train = load_split(paths["train"])
        assert np.array_equal(train.cluster_label, np.unique(train.Y, return_inverse=True)[1])
        assert np.array_equal(train.Y, train_y[train.index])
        runs[how] = train
    a, b = runs["true"], runs["permuted"]
    assert np.array_equal(a.index, b.index) and not np.array_equal(a.cluster_label, b.cluster_label)

    out = tmp_path / "refused"
    r = run_main("cfe.encode", oracle_argv(tmp_path / "true" / "data", out))
    assert r.code == 2 and r.out == "" and r.err.count("\n") == 1 and r.err.startswith("error: --labels oracle")
    assert "needs --supervised" in r.err and not out.exists()
