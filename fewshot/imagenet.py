"""mini-ImageNet and tieredImageNet as caches of 84x84 RGB images.

    miniimagenet:   mini-imagenet-cache-{train,val,test}.pkl ({"image_data": (N,84,84,3) uint8,
                    "class_dict": {wnid: [indices]}}), or Ravi & Larochelle's {train,val,test}.csv
                    ("filename,label" with label a wnid) beside images/<filename>
    tieredimagenet: {train,val,test}_images_png.pkl (a list of PNG bytes) and {train,val,test}_labels.pkl
                    ({"label_specific": (N,) ints, "label_general": ..., "label_specific_str": [wnids]})

Pickles can run any code as they load, so these are read by an unpickler that builds plain data and numpy arrays
only. The tieredImageNet pickles were written by Python 2: its str (the PNG bytes, the dict keys) loads as bytes.
"""

import codecs
import csv
import importlib
import pickle
from pathlib import Path

import numpy as np

from fewshot.data import SPLITS
from fewshot.errors import UserError, require_file
from fewshot.imagefolder import SIDE, build, check_classes, decode_all, require_dir

MINI_PICKLE = "mini-imagenet-cache-{}.pkl"


# What numpy arrays and scalars pickle as: _frombuffer with protocol 5, _reconstruct with the older protocols
NUMPY_BUILDERS = {"multiarray": ("_reconstruct", "scalar"), "numeric": ("_frombuffer",)}


def _numpy_core(module: str):
    try:  # numpy 2 moved numpy.core to numpy._core; pickles written by either name it
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{module}")


class _DataUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays, and refuses every other global a pickle names."""

    def find_class(self, module, name):
        package, _, sub = module.rpartition(".")
        if package in ("numpy.core", "numpy._core") and name in NUMPY_BUILDERS.get(sub, ()):
            return getattr(_numpy_core(sub), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles written by Python 3 store bytes
            return codecs.encode
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a data file does not need")


def load_pickle(path):
    path = require_file(path)
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OSError) as e:
        raise UserError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _text(value) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _field(data, key, path, optional=False):
    """data[key] of an unpickled dict, whose keys are bytes when Python 2 wrote it."""
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a {type(data).__name__}, expected a dict with '{key}'")
    for k in (key, key.encode()):
        if k in data:
            return data[k]
    if optional:
        return None
    raise UserError(f"{path}: no '{key}' (has {', '.join(sorted(map(_text, data))) or 'nothing'})")


def _mini_pickle(path) -> tuple:
    """(images (N,84,84,3) uint8, {wnid: row indices}) of one mini-imagenet-cache-{split}.pkl."""
    data = load_pickle(require_file(path, "split file"))
    images, class_dict = _field(data, "image_data", path), _field(data, "class_dict", path)
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:] == (SIDE, SIDE, 3)):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise UserError(f"{path}: image_data must be uint8 (N,{SIDE},{SIDE},3), got {got}")
    if not isinstance(class_dict, dict):
        raise UserError(f"{path}: class_dict must be a dict {{wnid: [indices]}}, got {type(class_dict).__name__}")
    classes = {}
    for wnid, rows in class_dict.items():
        rows = np.asarray(rows)
        if rows.ndim != 1 or (len(rows) and not np.issubdtype(rows.dtype, np.integer)):
            raise UserError(f"{path}: class_dict[{_text(wnid)}] must be a list of image indices")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(images)):
            raise UserError(f"{path}: class_dict[{_text(wnid)}] holds indices outside 0..{len(images) - 1}")
        classes[_text(wnid)] = rows.astype(np.int64)
    rows = np.concatenate([np.zeros(0, np.int64), *classes.values()])
    if len(np.unique(rows)) < len(rows):
        raise UserError(f"{path}: class_dict lists an image under two classes (or twice)")
    return images, classes


def _mini_from_pickles(src: Path) -> tuple:
    loaded = {s: _mini_pickle(src / MINI_PICKLE.format(s)) for s in SPLITS}
    check_classes({s: {c: len(r) for c, r in cls.items()} for s, (_, cls) in loaded.items()},
                  {s: src / MINI_PICKLE.format(s) for s in SPLITS})
    splits, names, first = {}, {}, 0
    for s, (images, classes) in loaded.items():
        names[s] = sorted(classes)
        splits[s] = (images[np.concatenate([classes[c] for c in names[s]])],
                     np.repeat(np.arange(first, first + len(names[s])), [len(classes[c]) for c in names[s]]))
        first += len(names[s])
    return f"mini-ImageNet pickles in {src}", splits, names


def _mini_csv(path: Path, images: Path) -> dict:
    """{wnid: [(name, image path)]} of one Ravi & Larochelle split file."""
    require_file(path, "split file")
    classes = {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read it as CSV ({e})") from None
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise UserError(f"{path}: the first line must be the header 'filename,label'")
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != 2 or not all(c.strip() for c in row):
            raise UserError(f"{path}:{line}: expected 'filename,label', got {','.join(row)!r}")
        image = images / row[0].strip()
        if not image.is_file():
            raise UserError(f"{path}:{line}: image {image} not found")
        classes.setdefault(row[1].strip(), []).append((str(image), image))
    return classes


def _mini_from_csv(src: Path, workers=None) -> tuple:
    members = {s: _mini_csv(src / f"{s}.csv", src / "images") for s in SPLITS}
    splits, names = build(members, {s: src / f"{s}.csv" for s in SPLITS}, SIDE, workers)
    return f"mini-ImageNet CSV split files and images in {src}, resized to {SIDE}x{SIDE} (LANCZOS)", splits, names


def prepare_miniimagenet(source, out: Path, workers=None) -> tuple:
    """source: a folder of mini-imagenet-cache-{train,val,test}.pkl, or of {train,val,test}.csv and images/.
    Labels count up from 0: train classes, then val, then test, by wnid within each split."""
    expected = "a folder of mini-imagenet-cache-{train,val,test}.pkl, or of {train,val,test}.csv and images/"
    src = require_dir(source, "miniimagenet", expected)
    if any((src / MINI_PICKLE.format(s)).exists() for s in SPLITS):
        return _mini_from_pickles(src)
    if any((src / f"{s}.csv").exists() for s in SPLITS):
        return _mini_from_csv(src, workers)
    raise UserError(f"{src}: holds neither mini-ImageNet pickles nor CSV split files; expected {expected}")


def _tiered_split(src: Path, split: str) -> tuple:
    """(PNG byte strings, label_specific (N,) int64, {label: class name}) of one tieredImageNet split."""
    png_path, label_path = src / f"{split}_images_png.pkl", src / f"{split}_labels.pkl"
    require_file(png_path, "split file")
    labels = load_pickle(require_file(label_path, "split file"))
    specific = np.asarray(_field(labels, "label_specific", label_path))
    if specific.ndim != 1 or not np.issubdtype(specific.dtype, np.integer) or (len(specific) and specific.min() < 0):
        raise UserError(f"{label_path}: label_specific must be non-negative integers (N,), got {specific.dtype} "
                        f"{specific.shape}")
    strings = _field(labels, "label_specific_str", label_path, optional=True)  # the wnid of each label
    if strings is not None and not isinstance(strings, (list, tuple, np.ndarray)):
        raise UserError(f"{label_path}: label_specific_str must be a list of class names")
    if strings is not None and len(specific) and len(strings) <= specific.max():
        raise UserError(f"{label_path}: label_specific_str names {len(strings)} classes, but a label is "
                        f"{specific.max()}")
    # without the wnids a class is only a number within its split, so the splits' classes cannot be compared
    names = {int(k): _text(strings[k]) if strings is not None else f"{split} {k}" for k in np.unique(specific)}
    pngs = load_pickle(png_path)
    if not isinstance(pngs, (list, np.ndarray)) or len(pngs) != len(specific):
        n = len(pngs) if isinstance(pngs, (list, np.ndarray)) else type(pngs).__name__
        raise UserError(f"{png_path}: expected a list of {len(specific)} PNG images (one per label in "
                        f"{label_path.name}), got {n}")
    for i, png in enumerate(pngs):  # bytes, or (as cv2.imencode gives them) uint8 arrays of those bytes
        if not (isinstance(png, (bytes, bytearray)) or (isinstance(png, np.ndarray) and png.dtype == np.uint8)):
            raise UserError(f"{png_path}: image {i} is a {type(png).__name__}, expected PNG bytes")
    return pngs, specific.astype(np.int64), names


def prepare_tieredimagenet(source, out: Path, workers=None) -> tuple:
    """source: a folder of {split}_images_png.pkl and {split}_labels.pkl for train, val and test. The PNGs are
    decoded by `workers` threads (default os.cpu_count()). Labels count up from 0: train classes, then val, then
    test, in label_specific order within each split; images stay in the pickles' order."""
    src = require_dir(source, "tieredimagenet", "a folder of {train,val,test}_images_png.pkl and _labels.pkl")
    loaded = {s: _tiered_split(src, s) for s in SPLITS}
    check_classes({s: {names[k]: int(n) for k, n in zip(*np.unique(y, return_counts=True))}
                   for s, (_, y, names) in loaded.items()}, {s: src / f"{s}_labels.pkl" for s in SPLITS})
    splits, classes, first = {}, {}, 0
    for s, (pngs, specific, names) in loaded.items():
        X = decode_all([(f"{src / f'{s}_images_png.pkl'}: image {i}", png) for i, png in enumerate(pngs)], SIDE,
                       workers)
        order = np.unique(specific)
        splits[s] = (X, first + np.searchsorted(order, specific))
        classes[s] = [names[int(k)] for k in order]
        first += len(order)
    return f"tieredImageNet pickles in {src} (label_specific classes)", splits, classes
