"""Omniglot splits with the pixels of upstream's meta-test, to evaluate a model as upstream's `test.py` does.

    python -m fewshot.torchmeta_split --zips DIR --cache-dir data/omniglot --out data/omniglot-torchmeta
    python -m maml.test --run RUN/maml-pem --cache data/omniglot-torchmeta/omniglot_cache_test.npz --shots 1

Upstream meta-trains on the nearest-neighbour cache but meta-tests on torchmeta's Omniglot: the official
105x105 PNGs, inverted and resized to 28 with PIL's bilinear filter (`fewshot.omniglot.to_torchmeta_pixels`).
This writes a split of the cache again, same characters and labels, with those pixels. It needs the prepared
cache and the official zips holding the split's characters (the cache's split is by character over both zips).
`--pixels cache --partial` writes the same drawings with the cache's pixels, in the same order, so the two kinds of
pixels can be compared on identical episodes when the zips hold only part of a split.
NOTE: upstream's test.py also draws its test characters from torchmeta's own (Vinyals) split, which overlaps the
cache's train split; here the characters are always the cache's.
"""

from pathlib import Path

import numpy as np

from fewshot import omniglot as om
from fewshot.cli import make_parser
from fewshot.data import SPLITS, load_split, prepared_path, write_split
from fewshot.errors import UserError, cli_main
from fewshot.io import provenance

PIXELS = {  # --pixels: (function, what it does, recorded in the written files)
    "torchmeta": (om.to_torchmeta_pixels, "inverted 105x105 PNG, PIL bilinear resize to 28 (upstream test.py)"),
    "cache": (om.to_cache_pixels, "105x105 PNG, nearest-neighbour resize to 28, inverted (the cache)"),
}


def resampled_splits(zip_paths, cache_splits, splits, partial=False, pixels="torchmeta"):
    """{split: (X (N,28,28,1), Y cache labels (N,))}: the drawings of each split's characters in the zips.

    Characters and labels are the cache's (`build_splits` with the cache). Unless `partial`, every character of
    each requested cache split must be in the zips."""
    built = om.build_splits(zip_paths, cache_splits, pixels=PIXELS[pixels][0])
    for split in splits:
        Y = built[split][1]
        if len(Y) == 0:
            raise UserError(f"the zips hold no drawing of the cache's {split} split")
        want = np.unique(cache_splits[split][1])
        missing = len(np.setdiff1d(want, Y))
        if missing and not partial:
            raise UserError(f"the zips lack {missing} of the {len(want)} characters of the cache's {split} split; "
                            f"give the zips that hold them, or --partial to write the rest")
    return {split: built[split] for split in splits}


def get_parser():
    p = make_parser("python -m fewshot.torchmeta_split", __doc__)
    p.add_argument("--zips", required=True, help="folder of the official Omniglot zips (or one zip)")
    p.add_argument("--cache-dir", required=True, help="folder with omniglot_cache_{train,val,test}.npz")
    p.add_argument("--out", required=True, help="folder for the resampled omniglot_cache_{split}.npz")
    p.add_argument("--splits", nargs="+", default=["test"], choices=SPLITS, help="the splits to rewrite")
    p.add_argument("--partial", action="store_true", help="write a split even if the zips lack some characters")
    p.add_argument("--pixels", choices=list(PIXELS), default="torchmeta",
                   help="torchmeta: upstream test.py's bilinear pixels; cache: the cache's nearest-neighbour ones")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if Path(args.out).resolve() == Path(args.cache_dir).resolve():  # same file names: it would replace the cache
        raise UserError(f"--out {args.out} is the --cache-dir; give another folder for the resampled splits")
    src = Path(args.zips)
    zips = sorted(src.glob("*.zip")) if src.is_dir() else [src]
    if not zips or not all(z.is_file() for z in zips):
        raise UserError(f"{src}: no official Omniglot zip found")
    cache_paths = {s: prepared_path(args.cache_dir, om.CACHE_NAME, s) for s in SPLITS}
    for path in cache_paths.values():
        if not path.is_file():
            raise UserError(f"{path}: file not found (prepare the cache first: python -m fewshot.datasets omniglot)")
    cache = {s: (sp.X, sp.Y) for s, path in cache_paths.items() for sp in [load_split(path)]}
    out = resampled_splits(zips, cache, args.splits, args.partial, args.pixels)  # all checked before writing
    meta = {"pixels": PIXELS[args.pixels][1],
            "zips": [str(z) for z in zips], "cache_dir": str(Path(args.cache_dir).resolve()), **provenance()}
    for s, (X, Y) in out.items():
        path = prepared_path(args.out, om.CACHE_NAME, s)
        write_split(path, X, Y, meta=meta)
        print(f"{path}: {len(Y)} drawings of {len(np.unique(Y))} characters")


if __name__ == "__main__":
    cli_main(main)
