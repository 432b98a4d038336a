"""Folders of image files as caches (`imagefolder`, `cifar10`), and what every image reader shares (fewshot.imagenet
too): decoding in parallel, the checks on classes, and the labels.

    imagefolder: root/<split>/<class>/*.{png,jpg,jpeg} with split train, test and optionally val; or
                 root/<class>/*.{png,jpg,jpeg}, split by class with seed 0 into --out/class_split.json
    cifar10:     cifar10-jpeg.tar.gz or its folder: {train,test}/<class>/NNNN.jpg

Labels are consecutive: the train classes first, then val, then test. Every image becomes side x side RGB uint8.
Hidden files (.DS_Store, ._* resource forks) are ignored; other files that are not images are skipped and counted
in the `how` that prepare.json records.
"""

import io
import lzma
import os
import tarfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from fewshot.classlists import DEFAULT_EXCLUDE, drop_classes, resolve_exclusion
from fewshot.data import SPLITS
from fewshot.errors import UserError
from fewshot.io import load_json, save_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # compared lower-cased: .JPG and .Png are images too
MIN_IMAGES_PER_CLASS = 2  # the least that can be a support and a query; the few-shot stages check shots later
SIDE = 84  # imagefolder's images, as mini- and tieredImageNet's
CLASS_SPLIT_FILE = "class_split.json"
CLASS_SPLIT_SEED = 0
CLASS_FRACTIONS = {"train": 0.64, "val": 0.16, "test": 0.20}  # of the classes; mini-ImageNet's 64/16/20 of 100
CIFAR10_SIDE = 32
# CIFAR-10 is split by class, never by CIFAR's own train/test images (those share their classes). Ten classes
# cannot give 5-way val and test tasks of their own, so there is no val split. Labels are CIFAR's class indices.
CIFAR10_SPLIT = {"train": ("airplane", "automobile", "bird", "cat", "deer"),
                 "test": ("dog", "frog", "horse", "ship", "truck")}


def to_pixels(img, side: int) -> np.ndarray:
    """A PIL image as these caches store it: (side, side, 3) uint8 RGB. The LANCZOS filter is the one of Ravi &
    Larochelle's mini-ImageNet script (proc_images.py), which made the images of the upstream pickles; an image
    already side x side is not resampled."""
    img = img.convert("RGB")
    if img.size != (side, side):
        img = img.resize((side, side), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def decode(source, name: str, side: int) -> np.ndarray:
    """One image file (a path) or its bytes (any bytes-like object) as `to_pixels`; `name` is what an error names."""
    try:
        with Image.open(source if isinstance(source, (str, Path)) else io.BytesIO(source)) as img:
            img.load()  # decode it here: a truncated file must fail now, naming the file
            return to_pixels(img, side)
    except FileNotFoundError:
        raise UserError(f"{name}: image file not found") from None
    except UnidentifiedImageError:
        raise UserError(f"{name}: not an image file Pillow can read") from None
    # a truncated or damaged stream: OSError, or SyntaxError from Pillow's PNG chunk parser
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise UserError(f"{name}: cannot read image ({type(e).__name__}: {e})") from None


def decode_all(items, side: int, workers=None) -> np.ndarray:
    """[(name, path or bytes)] -> (N, side, side, 3) uint8, decoded by `workers` threads (default: os.cpu_count();
    Pillow releases the GIL while it decodes and resizes). The first bad image, in order, is the one reported."""
    X = np.empty((len(items), side, side, 3), np.uint8)

    def chunk(start):
        for i in range(start, min(start + 64, len(items))):
            X[i] = decode(items[i][1], items[i][0], side)

    pool = ThreadPoolExecutor(workers or os.cpu_count() or 1)
    try:
        for _ in pool.map(chunk, range(0, len(items), 64)):
            pass
    finally:
        pool.shutdown(cancel_futures=True)  # after an error, the images not yet decoded are not worth decoding
    return X


def check_classes(counts: dict, where: dict) -> None:
    """counts: {split: {class: images}}; where: {split: the file or folder an error names}. Every split needs a
    class, every class MIN_IMAGES_PER_CLASS images, and no class may be in two splits."""
    seen = {}
    for split, classes in counts.items():
        if not classes:
            raise UserError(f"{where[split]}: no classes (is it empty?)")
        for c, n in classes.items():
            if c in seen:
                raise UserError(f"class {c} is in two splits: {seen[c]} ({where[seen[c]]}) and {split} "
                                f"({where[split]})")
            seen[c] = split
            if n < MIN_IMAGES_PER_CLASS:
                raise UserError(f"{where[split]}: class {c} has {n} image(s); each class needs at least "
                                f"{MIN_IMAGES_PER_CLASS}")


def build(members: dict, where: dict, side: int, workers=None) -> tuple:
    """members: {split: {class: [(name, path or bytes)]}} -> ({split: (X, Y)}, {split: [class names in label
    order]}): labels count up from 0 over the train classes, then val, then test, sorted by name in each split."""
    check_classes({s: {c: len(v) for c, v in m.items()} for s, m in members.items()}, where)
    splits, classes, first = {}, {}, 0
    for split in (s for s in SPLITS if s in members):
        classes[split] = sorted(members[split])
        items = [item for c in classes[split] for item in members[split][c]]
        sizes = [len(members[split][c]) for c in classes[split]]
        Y = np.repeat(np.arange(first, first + len(sizes)), sizes).astype(np.int64)
        splits[split] = (decode_all(items, side, workers), Y)
        first += len(sizes)
    return splits, classes


def _hidden(name: str) -> bool:
    return name.startswith(".")  # .DS_Store, ._* resource forks, .ipynb_checkpoints


def _is_image(path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _entries(folder: Path) -> list:
    """The non-hidden entries of a folder, sorted (so the order of the images never depends on the file system)."""
    try:
        return sorted(p for p in folder.iterdir() if not _hidden(p.name))
    except OSError as e:
        raise UserError(f"{folder}: cannot list it ({e.strerror})") from None


def scan_classes(folder: Path) -> tuple:
    """({class: [(name, path)] of its images}, [files skipped]) of folder/<class>/*."""
    classes, skipped = {}, []
    for entry in _entries(folder):
        if not entry.is_dir():
            skipped.append(entry)
            continue
        files = _entries(entry)
        classes[entry.name] = [(str(p), p) for p in files if p.is_file() and _is_image(p)]
        skipped += [p for p in files if not (p.is_file() and _is_image(p))]
    if not classes:
        raise UserError(f"{folder}: no class folders (expected {folder}/<class>/<image>.png|jpg|jpeg; is it empty?)")
    return classes, skipped


def require_dir(source, name: str, expected: str) -> Path:
    """--source as a folder that exists, or a one-line UserError saying what `name` expects there."""
    if not source:
        raise UserError(f"{name} needs --source: {expected}")
    src = Path(source)
    if not src.is_dir():
        raise UserError(f"{src}: {'is not a folder' if src.exists() else 'not found'}; {name} expects {expected}")
    return src


def skipped_note(skipped) -> str:
    return f"; skipped {len(skipped)} non-image files (e.g. {skipped[0]})" if skipped else ""


def split_classes(names, seed: int = CLASS_SPLIT_SEED, fractions: dict = CLASS_FRACTIONS) -> dict:
    """{split: [class names]}: a draw by class with its own np.random.default_rng(seed), val and test each
    round(fraction x classes) classes but at least one, train the rest. Names are sorted first, so the order they
    are listed in does not matter."""
    names = sorted(names)
    if len(names) < len(SPLITS):
        raise UserError(f"{len(names)} classes cannot be split into {', '.join(SPLITS)}: at least {len(SPLITS)} "
                        f"are needed, or give {', '.join(SPLITS)} folders of your own")
    n_val, n_test = (max(1, int(fractions[s] * len(names) + 0.5)) for s in ("val", "test"))
    order = np.random.default_rng(seed).permutation(len(names))
    bounds = {"train": (0, len(names) - n_val - n_test), "val": (len(names) - n_val - n_test, len(names) - n_test),
              "test": (len(names) - n_test, len(names))}
    return {s: sorted(names[i] for i in order[lo:hi]) for s, (lo, hi) in bounds.items()}


def load_class_split(path: Path, names) -> dict:
    """{split: [class names]} from a class_split.json, which must name exactly the classes found, each once."""
    data = load_json(path)
    split = data.get("splits") if isinstance(data, dict) else None
    if not isinstance(split, dict) or set(split) != set(SPLITS) or \
            not all(isinstance(v, list) and v and all(isinstance(c, str) for c in v) for v in split.values()):
        raise UserError(f"{path}: expected {{\"splits\": {{train, val, test: [class names], none empty}}}}; "
                        f"delete it to draw a new class split")
    listed = [c for s in SPLITS for c in split[s]]
    twice = sorted(c for c, n in Counter(listed).items() if n > 1)
    if twice:
        raise UserError(f"{path}: class {twice[0]} is in two splits")
    missing, unknown = sorted(set(names) - set(listed)), sorted(set(listed) - set(names))
    if missing or unknown:
        raise UserError(f"{path}: its classes differ from the folder's ({len(missing)} not in it, e.g. "
                        f"{missing[:1]}; {len(unknown)} not in the folder, e.g. {unknown[:1]}); delete it to draw "
                        f"a new class split")
    return {s: split[s] for s in SPLITS}


def prepare_imagefolder(source, out: Path, workers=None, exclude=DEFAULT_EXCLUDE) -> tuple:
    """source: root/<split>/<class>/* (train and test needed, val optional) or root/<class>/*; the latter is split
    by class (`split_classes`) into out/class_split.json, which a later preparation reuses. The classes of the
    `exclude` lists (fewshot.classlists) are then left out of the train split; val and test keep theirs.
    Returns (how, splits, class names, {"excluded_classes": {"lists", "removed"}} for prepare.json)."""
    excluded, lists = resolve_exclusion(exclude)
    root = require_dir(source, "imagefolder", "root/<split>/<class>/<image> or root/<class>/<image>")
    entries = _entries(root)
    present = [s for s in SPLITS if (root / s).is_dir()]
    if not {"train", "test"} & set(present):  # no split folders: one class per folder, split here
        classes, skipped = scan_classes(root)
        path = Path(out) / CLASS_SPLIT_FILE
        drawn = not path.exists()
        split = split_classes(classes) if drawn else load_class_split(path, classes)
        members = {s: {c: classes[c] for c in split[s]} for s in SPLITS}
        members["train"], removed = drop_classes(members["train"], excluded, root)
        splits, names = build(members, {s: root for s in SPLITS}, SIDE, workers)
        if drawn:  # only once every image was read: a failed preparation leaves nothing behind
            save_json(path, {"seed": CLASS_SPLIT_SEED, "fractions": CLASS_FRACTIONS, "source": str(root),
                             "splits": split})
        how = (f"image folder {root}, classes split with seed {CLASS_SPLIT_SEED} into {path}" if drawn
               else f"image folder {root}, classes split as {path} says")
        return how + skipped_note(skipped) + excluded_note(removed), splits, names, excluded_record(lists, removed)
    for s in ("train", "test"):
        if s not in present:
            raise UserError(f"{root / s}: split folder not found (a folder of split folders needs train and test; "
                            f"val is optional)")
    other = [p.name for p in entries if p.is_dir() and p.name not in SPLITS]
    if other:  # e.g. 'validation': its images would silently be left out
        raise UserError(f"{root / other[0]}: unexpected folder beside {', '.join(present)}; split folders must "
                        f"be named {', '.join(SPLITS)}")
    skipped = [p for p in entries if not p.is_dir()]
    members = {}
    for s in present:
        members[s], more = scan_classes(root / s)
        skipped += more
    members["train"], removed = drop_classes(members["train"], excluded, root / "train")
    splits, names = build(members, {s: root / s for s in present}, SIDE, workers)
    warning = "" if "val" in present else f"; WARNING: no {root / 'val'} folder, so no val split"
    how = f"image folder {root} with split folders" + warning + skipped_note(skipped) + excluded_note(removed)
    return how, splits, names, excluded_record(lists, removed)


def excluded_note(removed) -> str:
    return f"; left {len(removed)} listed classes out of train (e.g. {removed[0]})" if removed else ""


def excluded_record(lists, removed) -> dict:
    return {"excluded_classes": {"lists": lists, "removed": removed}}


def _cifar_archive(path: Path) -> tuple:
    """({cifar split: {class: [(name, bytes)]}}, [members skipped]) of a cifar10-jpeg.tar.gz, read without
    extracting anything (so no member path can write anywhere)."""
    found, skipped = {"train": {}, "test": {}}, []
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                parts = PurePosixPath(m.name).parts
                if not m.isfile() or any(_hidden(p) for p in parts):
                    continue
                if len(parts) < 3 or parts[-3] not in found or not _is_image(PurePosixPath(m.name)):
                    skipped.append(m.name)
                    continue
                with tar.extractfile(m) as f:
                    found[parts[-3]].setdefault(parts[-2], []).append((f"{path}: member {m.name}", f.read()))
    except (tarfile.TarError, lzma.LZMAError, zlib.error, EOFError, OSError) as e:
        raise UserError(f"{path}: not a readable tar archive ({e})") from None
    return found, skipped


def prepare_cifar10(source, out: Path, workers=None) -> tuple:
    """source: cifar10-jpeg.tar.gz or the folder it unpacks to ({train,test}/<class>/NNNN.jpg). All 6000 images
    of a class (CIFAR's train and test images alike) go to the split CIFAR10_SPLIT gives the class."""
    expected = "cifar10-jpeg.tar.gz or a folder of {train,test}/<class>/<image>.jpg"
    if source and Path(source).is_file():
        found, skipped = _cifar_archive(Path(source))
    else:
        src = require_dir(source, "cifar10", expected)
        found, skipped = {}, []
        for s in ("train", "test"):
            if not (src / s).is_dir():
                raise UserError(f"{src / s}: folder not found; cifar10 expects {expected}")
            found[s], more = scan_classes(src / s)
            skipped += more
    per_class = {}  # CIFAR's train images of a class, then its test images, each in file name order
    for s in ("train", "test"):
        for c, items in found[s].items():
            per_class.setdefault(c, []).extend(sorted(items, key=lambda item: item[0]))
    wanted = {c for names in CIFAR10_SPLIT.values() for c in names}
    if set(per_class) != wanted:
        raise UserError(f"{source}: expected the ten CIFAR-10 classes; missing {sorted(wanted - set(per_class))}, "
                        f"unexpected {sorted(set(per_class) - wanted)}")
    members = {s: {c: per_class[c] for c in names} for s, names in CIFAR10_SPLIT.items()}
    splits, names = build(members, {s: f"{source} ({s} classes)" for s in members}, CIFAR10_SIDE, workers)
    return f"CIFAR-10 JPEGs {source}, split by class (no val split)" + skipped_note(skipped), splits, names
