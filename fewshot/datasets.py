"""Dataset names, how to prepare each into the cache format, and how to read one of its image files.

    python -m fewshot.datasets omniglot --source ../shared/data/omniglot/omniglot.tar.xz --out data/omniglot
    python -m fewshot.datasets digits --out data/digits
    python -m fewshot.datasets glyphs --out data/glyphs
    python -m fewshot.datasets miniimagenet --source path/to/miniimagenet --out data/miniimagenet
    python -m fewshot.datasets tieredimagenet --source path/to/tieredimagenet --out data/tieredimagenet
    python -m fewshot.datasets imagefolder --source path/to/images --out data/myimages [--exclude-classes none]
    python -m fewshot.datasets cifar10 --source ../shared/data/cifar10/cifar10-jpeg.tar.gz --out data/cifar10

Writes {name}_cache_{train,val,test}.npz (uint8 NHWC images, true labels) and prepare.json into --out; the readers
of fewshot.imagenet and fewshot.imagefolder also record each split's class names, in label order, in prepare.json.
An image folder's train split leaves out the val and test classes of mini- and tieredImageNet unless told otherwise
(--exclude-classes, fewshot.classlists); prepare.json says which it left out.
"""

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fewshot.classlists import DEFAULT_EXCLUDE, EXCLUDE_HELP
from fewshot.cli import make_parser
from fewshot.data import SPLITS, assert_disjoint_classes, check_split, prepared_path, write_split
from fewshot.errors import UserError, cli_main
from fewshot.imagefolder import prepare_cifar10, prepare_imagefolder, to_pixels
from fewshot.imagenet import prepare_miniimagenet, prepare_tieredimagenet
from fewshot.io import provenance, save_json


def prepare_omniglot(source, out: Path) -> tuple:
    """source: the upstream omniglot.tar.xz, a folder of omniglot_cache_*.npz, a folder of the official zips,
    or None to download the official zips (then split by character with seed 0, recorded in prepare.json).
    Returns (how, {split: (X, Y)}); nothing is written into `out` but downloads."""
    from fewshot import omniglot as om

    src = Path(source) if source else None
    if src is None or (src.is_dir() and sorted(src.glob("*.zip"))):
        zips = om.download_official(out / "official") if src is None else sorted(src.glob("*.zip"))
        how = f"official zips {[str(z) for z in zips]}, split by character with seed 0"
        return how, om.build_splits(zips, cache_splits=None, seed=0)
    if src.is_file() and src.name.endswith((".tar.xz", ".tar")):
        with _scratch_dir() as scratch:  # the archive's caches are read back from here, then it is removed
            paths = om.extract_cache_archive(src, scratch)
            return f"upstream cache archive {src}", om.load_cache_splits(paths, archive=src)
    if src.is_dir() and all(prepared_path(src, "omniglot", s).is_file() for s in SPLITS):
        return f"upstream caches in {src}", om.load_cache_splits({s: prepared_path(src, "omniglot", s) for s in SPLITS})
    raise UserError(f"OMNIGLOT_SOURCE={src}: expected omniglot.tar.xz, a folder of "
                    f"omniglot_cache_{{train,val,test}}.npz, or a folder of official Omniglot zips")


def prepare_digits(source, out: Path) -> tuple:
    """scikit-learn's bundled 8x8 handwritten digits (no download), upsampled to 28x28 grey:
    train = digits 0-4 (their labels are never read by training), test = digits 5-9, no val split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    img = np.clip(d.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    img = np.stack([np.asarray(Image.fromarray(x).resize((28, 28), Image.BILINEAR)) for x in img])[..., None]
    y = d.target.astype(np.int64)
    return ("sklearn.datasets.load_digits (8x8, bilinear to 28x28)",
            {"train": (img[y < 5], y[y < 5]), "test": (img[y >= 5], y[y >= 5])})


def prepare_glyphs(source, out: Path) -> tuple:
    """Made-up characters drawn by fewshot.glyphs (no download): 150 train, 50 val and 50 test classes of 20
    images each. `source` is unused."""
    from fewshot import glyphs

    return "fewshot.glyphs, seed 0", glyphs.make_splits(seed=0)


def _scratch_dir():
    """A temporary folder, removed when the `with` block ends (not inside --out, which a failure leaves alone)."""
    try:
        return tempfile.TemporaryDirectory(prefix="fewshot-extract-")
    except OSError as e:
        raise UserError(f"cannot create a temporary folder ({e}); set TMPDIR to a writable folder") from None


def _unmark_prepared(marker: Path) -> None:
    """Remove the prepare.json of an earlier preparation before its caches are replaced one by one: an
    interruption then leaves no marker beside a mix of old and new caches, and the preparation is redone."""
    try:
        marker.unlink(missing_ok=True)
    except OSError as e:  # e.g. a folder by that name, or a read-only --out
        raise UserError(f"{marker}: cannot remove the earlier preparation's marker ({e.strerror})") from None


# A preparer returns (how, {split: (X, Y)}), or (how, {split: (X, Y)}, {split: [class name of each label, in order]}),
# or that and {more entries of prepare.json}
DATASETS = {"omniglot": prepare_omniglot, "digits": prepare_digits, "glyphs": prepare_glyphs,
            "miniimagenet": prepare_miniimagenet, "tieredimagenet": prepare_tieredimagenet,
            "imagefolder": prepare_imagefolder, "cifar10": prepare_cifar10}
RGB_READERS = ("miniimagenet", "tieredimagenet", "imagefolder", "cifar10")  # their pixels: imagefolder.to_pixels


def image_file_loader(name: str, shape: tuple):
    """A function path -> HxWxC uint8 that turns an image file into the pixels of this dataset's caches."""
    def load(path):
        try:
            img = Image.open(path)
            img.load()
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"{path}: cannot read image ({e})") from None
        if name == "omniglot":
            from fewshot.omniglot import to_cache_pixels

            return to_cache_pixels(img)
        h, w, c = shape
        if name in RGB_READERS and h == w and c == 3:
            return to_pixels(img, h)
        img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
        return np.asarray(img).reshape(h, w, c)
    return load


def get_parser():
    p = make_parser("python -m fewshot.datasets", __doc__)
    p.add_argument("name", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--source", help="where the raw data is (dataset-specific; see each prepare_* function)")
    p.add_argument("--out", required=True, help="folder for {name}_cache_{split}.npz")
    p.add_argument("--exclude-classes", metavar="LISTS", help=EXCLUDE_HELP)
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.name not in DATASETS:
        raise UserError(f"unknown dataset '{args.name}'; known: {', '.join(DATASETS)}")
    prov = provenance()  # as the run starts: a commit made during a long download must not be named
    out = Path(args.out)
    if args.exclude_classes is not None and args.name != "imagefolder":
        raise UserError(f"--exclude-classes applies to imagefolder only; {args.name}'s class split is fixed")
    exclude = DEFAULT_EXCLUDE if args.exclude_classes is None else args.exclude_classes
    how, splits, *more = DATASETS[args.name](args.source, out, **({"exclude": exclude} if args.name == "imagefolder"
                                                                   else {}))
    names = more[0] if more else None
    record = more[1] if len(more) > 1 else {}
    # Check everything before writing anything: a source that fails (overlapping classes, bad images) leaves
    # no caches behind, and prepare.json, written last, marks a complete preparation.
    splits = {s: check_split(X, Y, f"{args.name} {s} split") for s, (X, Y) in splits.items()}
    assert_disjoint_classes({s: Y for s, (X, Y) in splits.items()})
    classes = {"classes": names} if names else {}  # {split: [the class name of each label, in label order]}
    for s, split_names in classes.get("classes", {}).items():
        assert len(split_names) == len(np.unique(splits[s][1])), (s, len(split_names))  # one name per label
    _unmark_prepared(out / "prepare.json")
    for s, (X, Y) in splits.items():
        write_split(prepared_path(out, args.name, s), X, Y)
    info = {s: {"images": int(len(Y)), "classes": int(len(np.unique(Y)))} for s, (X, Y) in splits.items()}
    save_json(out / "prepare.json", {"dataset": args.name, "source": how, "splits": info, **classes, **record, **prov})
    print(f"{args.name}: " + ", ".join(f"{s} {v['images']} images / {v['classes']} classes"
                                        for s, v in info.items()) + f" -> {out}")


if __name__ == "__main__":
    cli_main(main)
