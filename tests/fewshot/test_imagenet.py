"""fewshot.imagenet: mini-ImageNet (pickles, CSV layout) and tieredImageNet on small files in their real format, and
each bad input as one line that names the file."""

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from fewshot.data import SPLITS, assert_disjoint_classes
from fewshot.datasets import image_file_loader
from fewshot.io import load_json
from tests.fewshot.readers import WNIDS, assert_error, colour, image_bytes, prepare, rgb_means, write

# mini-ImageNet ------------------------------------------------------------------------------------------------


def mini_pickles(root, wnids=WNIDS, per_class=4, protocol=pickle.HIGHEST_PROTOCOL):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, names in wnids.items():
        images = rng.integers(0, 256, (len(names) * per_class, 84, 84, 3), dtype=np.uint8)
        data[split] = {"image_data": images,
                       "class_dict": {w: list(range(i * per_class, (i + 1) * per_class)) for i, w in enumerate(names)}}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump(data[split], f, protocol=2 if split == "train" else protocol)  # 2: bytes via _codecs
    return data


def test_miniimagenet_pickles(tmp_path, run_main):
    data = mini_pickles(tmp_path / "mini")
    splits = prepare(run_main, "miniimagenet", tmp_path / "mini", tmp_path / "out")
    classes = load_json(tmp_path / "out" / "prepare.json")["classes"]
    assert classes == {s: sorted(w) for s, w in WNIDS.items()}
    for offset, s in enumerate(SPLITS):
        assert splits[s].X.shape == (12, 84, 84, 3) and splits[s].X.dtype == np.uint8 and splits[s].Y.dtype == np.int64
        assert np.array_equal(np.unique(splits[s].Y), np.arange(3 * offset, 3 * offset + 3))
        for label, wnid in enumerate(classes[s], start=3 * offset):
            rows = data[s]["class_dict"][wnid]
            assert np.array_equal(splits[s].X[splits[s].Y == label], data[s]["image_data"][rows])
    assert_disjoint_classes({s: v.Y for s, v in splits.items()})


def mini_csv(root, wnids=WNIDS, per_class=2):
    for k, (split, names) in enumerate(wnids.items()):
        lines = ["filename,label"]
        for i, w in enumerate(names):
            for j in range(per_class):
                name = f"{w}_{j}.jpg"
                write(root / "images" / name, image_bytes(colour(3 * k + i), size=(20 + j, 16)))
                lines.append(f"{name},{w}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def test_miniimagenet_csv_layout_resizes_to_84(tmp_path, run_main):
    mini_csv(tmp_path / "mini")
    splits = prepare(run_main, "miniimagenet", tmp_path / "mini", tmp_path / "out")
    classes = load_json(tmp_path / "out" / "prepare.json")["classes"]
    assert classes == {s: sorted(w) for s, w in WNIDS.items()}
    for offset, s in enumerate(SPLITS):
        assert splits[s].X.shape == (6, 84, 84, 3) and splits[s].X.dtype == np.uint8
        for label, mean in rgb_means(splits[s]).items():
            wnid = classes[s][label - 3 * offset]
            assert np.abs(mean - colour(3 * offset + WNIDS[s].index(wnid))).max() < 4, (s, wnid)
    # an image file named by an episodes file becomes the same pixels as in the cache
    path = tmp_path / "mini" / "images" / f"{classes['val'][0]}_0.jpg"
    pixels = image_file_loader("miniimagenet", (84, 84, 3))(path)
    assert any(np.array_equal(pixels, x) for x in splits["val"].X)


def test_a_pickle_cannot_run_code(tmp_path, run_main):
    mini_pickles(tmp_path / "mini")
    victim = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {victim}",)

    (tmp_path / "mini" / "mini-imagenet-cache-val.pkl").write_bytes(pickle.dumps({"image_data": Evil()}))
    r = run_main("fewshot.datasets", ["miniimagenet", "--source", tmp_path / "mini", "--out", tmp_path / "out"])
    assert_error(r, "mini-imagenet-cache-val.pkl: not a readable pickle", "system")
    assert not victim.exists()


@pytest.mark.parametrize("case", ["missing split file", "class in two splits", "one image", "not a folder",
                                  "bad class_dict"])
def test_miniimagenet_pickle_errors(tmp_path, run_main, case):
    src = tmp_path / "mini"
    wnids = {**WNIDS, "val": ["n01", "n04", "n05"]} if case == "class in two splits" else WNIDS
    data = mini_pickles(src, wnids)
    expected = {"missing split file": ("mini-imagenet-cache-test.pkl: split file not found",),
                "class in two splits": ("class n01 is in two splits: train", "val (", "cache-val.pkl"),
                "one image": ("mini-imagenet-cache-test.pkl: class n08 has 1 image(s)",),
                "not a folder": ("mini-imagenet-cache-train.pkl: is not a folder",),
                "bad class_dict": ("mini-imagenet-cache-val.pkl: class_dict[n04] holds indices outside 0..11",)}
    if case == "one image":
        data["test"]["class_dict"]["n08"] = [4]
    if case == "bad class_dict":
        data["val"]["class_dict"]["n04"] = [3, 12]
    for s in ("test", "val"):
        with open(src / f"mini-imagenet-cache-{s}.pkl", "wb") as f:
            pickle.dump(data[s], f)
    if case == "missing split file":
        (src / "mini-imagenet-cache-test.pkl").unlink()
    source = src / "mini-imagenet-cache-train.pkl" if case == "not a folder" else src
    r = run_main("fewshot.datasets", ["miniimagenet", "--source", source, "--out", tmp_path / "out"])
    assert_error(r, *expected[case])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing csv", "missing image", "corrupt image", "bad header", "empty"])
def test_miniimagenet_csv_errors(tmp_path, run_main, case):
    src = tmp_path / "mini"
    mini_csv(src)
    if case == "missing csv":
        (src / "test.csv").unlink()
    if case == "missing image":
        (src / "images" / "n02_1.jpg").unlink()
    if case == "corrupt image":
        write(src / "images" / "n05_0.jpg", image_bytes((1, 2, 3))[:60])
    if case == "bad header":
        (src / "val.csv").write_text("file,class\nn05_0.jpg,n05\n")
    if case == "empty":
        (src / "val.csv").write_text("filename,label\n")
    expected = {"missing csv": (f"{src / 'test.csv'}: split file not found",),
                "missing image": (f"{src / 'train.csv'}:7: image {src / 'images' / 'n02_1.jpg'} not found",),
                "corrupt image": (f"{src / 'images' / 'n05_0.jpg'}: cannot read image",),
                "bad header": (f"{src / 'val.csv'}: the first line must be the header 'filename,label'",),
                "empty": (f"{src / 'val.csv'}: no classes",)}
    r = run_main("fewshot.datasets", ["miniimagenet", "--source", src, "--out", tmp_path / "out"])
    assert_error(r, *expected[case])


# tieredImageNet -----------------------------------------------------------------------------------------------


def tiered_pickles(root, per_class=2):
    """Three classes a split; the train labels dict has bytes keys, as Python 2 wrote the real ones."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    images = {}
    for k, split in enumerate(SPLITS):
        specific = np.tile(np.array([1, 0, 2]), per_class)
        images[split] = rng.integers(0, 256, (len(specific), 84, 84, 3), dtype=np.uint8)
        pngs = []
        for x in images[split]:
            buf = io.BytesIO()
            Image.fromarray(x).save(buf, "PNG")
            pngs.append(buf.getvalue())
        if split == "val":  # as cv2.imencode gives them: uint8 arrays of the PNG bytes
            pngs = [np.frombuffer(p, np.uint8) for p in pngs]
        if split == "test":
            pngs = np.array(pngs, dtype=object)
        labels = {"label_specific": specific, "label_general": np.zeros_like(specific),
                  "label_specific_str": [f"n{k}{c}" for c in range(3)]}
        if split == "train":
            labels = {key.encode(): value for key, value in labels.items()}
        with open(root / f"{split}_images_png.pkl", "wb") as f:
            pickle.dump(pngs, f)
        with open(root / f"{split}_labels.pkl", "wb") as f:
            pickle.dump(labels, f)
    return images


def test_tieredimagenet(tmp_path, run_main):
    images = tiered_pickles(tmp_path / "tiered")
    splits = prepare(run_main, "tieredimagenet", tmp_path / "tiered", tmp_path / "out")
    specific = np.tile(np.array([1, 0, 2]), 2)
    for k, s in enumerate(SPLITS):
        assert splits[s].X.shape == (6, 84, 84, 3) and splits[s].X.dtype == np.uint8
        assert np.array_equal(splits[s].X, images[s])  # PNG is lossless and already 84x84: the very pixels
        assert np.array_equal(splits[s].Y, specific + 3 * k)
    assert load_json(tmp_path / "out" / "prepare.json")["classes"] == {
        s: [f"n{k}{c}" for c in range(3)] for k, s in enumerate(SPLITS)}


@pytest.mark.parametrize("case", ["corrupt png", "count mismatch", "missing labels", "class in two splits"])
def test_tieredimagenet_errors(tmp_path, run_main, case):
    src = tmp_path / "tiered"
    tiered_pickles(src)
    if case == "corrupt png":
        pngs = pickle.loads((src / "val_images_png.pkl").read_bytes())
        pngs[1] = pngs[1][:100]
        (src / "val_images_png.pkl").write_bytes(pickle.dumps(pngs))
    if case == "count mismatch":
        pngs = pickle.loads((src / "test_images_png.pkl").read_bytes())
        (src / "test_images_png.pkl").write_bytes(pickle.dumps(list(pngs[:5])))
    if case == "missing labels":
        (src / "val_labels.pkl").unlink()
    if case == "class in two splits":
        labels = pickle.loads((src / "test_labels.pkl").read_bytes())
        labels["label_specific_str"][2] = "n11"
        (src / "test_labels.pkl").write_bytes(pickle.dumps(labels))
    expected = {"corrupt png": (f"{src / 'val_images_png.pkl'}: image 1: cannot read image",),
                "count mismatch": (f"{src / 'test_images_png.pkl'}: expected a list of 6 PNG images", "got 5"),
                "missing labels": (f"{src / 'val_labels.pkl'}: split file not found",),
                "class in two splits": ("class n11 is in two splits: val", "test_labels.pkl")}
    r = run_main("fewshot.datasets", ["tieredimagenet", "--source", src, "--out", tmp_path / "out"])
    assert_error(r, *expected[case])


