"""Dataset names, how to prepare each into the cache format, and how to read one of its image files.

    python -m fewshot.datasets omniglot --source ../shared/data/omniglot/omniglot.tar.xz --out data/omniglot
    python -m fewshot.datasets digits --out data/digits

Writes {name}_cache_{train,val,test}.npz (uint8 NHWC images, true labels) and prepare.json into --out.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fewshot.data import SPLITS, assert_disjoint_classes, load_split, prepared_path, write_split
from fewshot.errors import UserError, cli_main
from fewshot.io import provenance, save_json


def prepare_omniglot(source, out: Path) -> dict:
    """source: the upstream omniglot.tar.xz, a folder of omniglot_cache_*.npz, a folder of the official zips,
    or None to download the official zips (then split by character with seed 0, recorded in prepare.json)."""
    from fewshot import omniglot as om

    targets = {s: prepared_path(out, "omniglot", s) for s in SPLITS}
    src = Path(source) if source else None
    if src is None or (src.is_dir() and sorted(src.glob("*.zip"))):
        zips = om.download_official(out / "official") if src is None else sorted(src.glob("*.zip"))
        how = f"official zips {[str(z) for z in zips]}, split by character with seed 0"
        splits = om.build_splits(zips, cache_splits=None, seed=0)
        for s in SPLITS:
            write_split(targets[s], *splits[s])
    elif src.is_file() and src.name.endswith((".tar.xz", ".tar")):
        om.extract_cache_archive(src, out)  # writes the three caches into out
        how = f"upstream cache archive {src}"
    elif src.is_dir() and all(prepared_path(src, "omniglot", s).is_file() for s in SPLITS):
        how = f"upstream caches in {src}"
        for s in SPLITS:
            if prepared_path(src, "omniglot", s).resolve() != targets[s].resolve():
                sp = load_split(prepared_path(src, "omniglot", s))
                write_split(targets[s], sp.X, sp.Y)
    else:
        raise UserError(f"OMNIGLOT_SOURCE={src}: expected omniglot.tar.xz, a folder of "
                        f"omniglot_cache_{{train,val,test}}.npz, or a folder of official Omniglot zips")
    loaded = {s: load_split(targets[s]) for s in SPLITS}  # read back: what was written is what is reported
    return {"source": how, "_labels": {s: sp.Y for s, sp in loaded.items()},
            "splits": {s: {"images": len(sp.Y), "classes": int(len(np.unique(sp.Y)))} for s, sp in loaded.items()}}


def prepare_digits(source, out: Path) -> dict:
    """scikit-learn's bundled 8x8 handwritten digits (no download), upsampled to 28x28 grey:
    train = digits 0-4 (their labels are never read by training), test = digits 5-9, no val split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    img = np.clip(d.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    img = np.stack([np.asarray(Image.fromarray(x).resize((28, 28), Image.BILINEAR)) for x in img])[..., None]
    y = d.target.astype(np.int64)
    splits = {"train": (img[y < 5], y[y < 5]), "test": (img[y >= 5], y[y >= 5])}
    for s, (X, Y) in splits.items():
        write_split(prepared_path(out, "digits", s), X, Y)
    return {"source": "sklearn.datasets.load_digits (8x8, bilinear to 28x28)",
            "splits": {s: {"images": int(len(X)), "classes": int(len(np.unique(Y)))} for s, (X, Y) in splits.items()},
            "_labels": {s: Y for s, (X, Y) in splits.items()}}


DATASETS = {"omniglot": prepare_omniglot, "digits": prepare_digits}


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
        img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
        return np.asarray(img).reshape(h, w, c)
    return load


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fewshot.datasets", description=__doc__.split("\n")[0])
    p.add_argument("name", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--source", help="where the raw data is (dataset-specific; see each prepare_* function)")
    p.add_argument("--out", required=True, help="folder for {name}_cache_{split}.npz")
    args = p.parse_args(argv)
    if args.name not in DATASETS:
        raise UserError(f"unknown dataset '{args.name}'; known: {', '.join(DATASETS)}")
    prov = provenance()  # as the run starts: a commit made during a long download must not be named
    out = Path(args.out)
    info = DATASETS[args.name](args.source, out)
    assert_disjoint_classes(info.pop("_labels"))
    save_json(out / "prepare.json", {"dataset": args.name, **info, **prov})
    print(f"{args.name}: " + ", ".join(f"{s} {v['images']} images / {v['classes']} classes"
                                        for s, v in info["splits"].items()) + f" -> {out}")


if __name__ == "__main__":
    cli_main(main)
