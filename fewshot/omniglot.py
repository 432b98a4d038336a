"""Omniglot from the official PNG zips or the upstream PL-CFE cache (docs/design.md, "Data and the cache contract").

Two sources give the same data:

- the upstream cache `omniglot.tar.xz`, holding `omniglot/omniglot_cache_{train,val,test}.npz` with X (N,28,28,1)
  uint8 and Y (N,) int64 (train 0-1099, val 1100-1199, test 1200-1622): `extract_cache_archive`;
- the official release, zips of 105x105 PNGs laid out `<top>/<Alphabet>/characterNN/XXXX_YY.png`
  (`images_background.zip`, `images_evaluation.zip`): `download_official`, `read_official_zip`.

Each official PNG resized to 28x28 with nearest-neighbour sampling and inverted gives the cache's pixels byte for
byte (`to_cache_pixels`), so the cache's split and labels can be recovered from the official zips by matching
images (`labels_from_cache`). Without the cache, `seeded_character_split` draws a split by character, as the
CACTUs split was drawn. `build_splits` puts it together; `write_prepared` writes the result in the cache format.
"""

import hashlib
import io
import lzma
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fewshot.data import SPLITS, assert_disjoint_classes, load_split, prepared_path, write_split
from fewshot.errors import UserError, require_file
from fewshot.io import atomic_path

CACHE_NAME = "omniglot"  # prepared_path(root, CACHE_NAME, split) is the upstream file name omniglot_cache_{split}.npz
CACHE_SIZES = (1100, 100, 423)  # characters in train / val / test of the CACTUs split used by PL-CFE
OFFICIAL_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
OFFICIAL_ZIPS = ("images_background.zip", "images_evaluation.zip")
SIDE = 28


def to_cache_pixels(pil_image) -> np.ndarray:
    """One official 105x105 PNG as the cache stores it: (28,28,1) uint8, white strokes on black.

    Nearest-neighbour is what the upstream cache used: it reproduces the cache byte for byte, other filters do not.
    """
    small = pil_image.convert("L").resize((SIDE, SIDE), Image.NEAREST)
    # The PNGs draw black strokes on white; the cache inverts them.
    return (255 - np.asarray(small, dtype=np.uint8))[..., None]


def to_torchmeta_pixels(pil_image) -> np.ndarray:
    """One official 105x105 PNG as upstream's meta-test (`test.py`) sees it: (28,28,1) uint8.

    That script reads Omniglot through torchmeta, which stores each PNG inverted at 105x105, and resizes it with
    torchvision's Resize(28), i.e. PIL's bilinear filter, which averages over each output pixel's footprint. Its
    meta-training reads the nearest-neighbour cache (`to_cache_pixels`) instead.
    """
    inverted = ImageOps.invert(pil_image.convert("L"))
    return np.asarray(inverted.resize((SIDE, SIDE), Image.BILINEAR), dtype=np.uint8)[..., None]


def _character_of(member: str):
    """'top/Alphabet/characterNN/XXXX_YY.png' -> 'Alphabet/characterNN', or None for anything but a drawing."""
    parts = PurePosixPath(member).parts
    if len(parts) < 3 or not parts[-1].lower().endswith(".png") or parts[-1].startswith("._") \
            or parts[0] == "__MACOSX":  # macOS archivers add resource-fork files that are not drawings
        return None
    return f"{parts[-3]}/{parts[-2]}"


def _read_member(zf, path, member) -> bytes:
    """The bytes of one zip member, or a one-line UserError naming the zip and the member."""
    try:
        return zf.read(member)
    # a damaged deflate stream (zlib.error), a bad CRC (BadZipFile), a compression method zipfile lacks
    # (NotImplementedError), an encrypted member (RuntimeError), a truncated or damaged lzma/bz2 stream
    except (zlib.error, zipfile.BadZipFile, NotImplementedError, RuntimeError, lzma.LZMAError, EOFError,
            OSError) as e:
        raise UserError(f"{path}: member {member} cannot be read ({e})") from None


def read_official_zip(path, pixels=to_cache_pixels):
    """Read an official Omniglot zip without extracting it; `pixels` turns each PNG into a (28,28,1) image.

    Returns (X uint8 (N,28,28,1), characters (N,) str 'Alphabet/characterNN', files: the zip member names), sorted
    by character, then file name, so the order does not depend on how the zip was written.
    """
    path = require_file(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = sorted((c, PurePosixPath(m).name, m) for m in zf.namelist()
                             if (c := _character_of(m)) is not None)
            if not members:
                raise UserError(f"{path}: holds no PNG drawings laid out <top>/<Alphabet>/<character>/<file>.png")
            X = np.empty((len(members), SIDE, SIDE, 1), dtype=np.uint8)
            for i, (_, _, member) in enumerate(members):
                data = _read_member(zf, path, member)
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        X[i] = pixels(im)
                except (UnidentifiedImageError, OSError, ValueError) as e:
                    raise UserError(f"{path}: {member} is not a readable PNG ({e})") from None
    except zipfile.BadZipFile as e:
        raise UserError(f"{path}: not a zip file ({e})") from None
    characters = np.array([c for c, _, _ in members], dtype=str)
    return X, characters, [m for _, _, m in members]


def read_official_zips(paths, pixels=to_cache_pixels):
    """Read several official zips as one (X, characters, files), sorted like `read_official_zip`.

    A drawing found in more than one zip (the small official subsets share characters) is kept once; the same
    character and file name with different pixels is an error, since then the zips disagree.
    """
    seen = {}  # (character, file name) -> pixels
    for path in paths:
        X, characters, files = read_official_zip(path, pixels)
        for x, c, f in zip(X, characters, files):
            key = (str(c), PurePosixPath(f).name)
            if key in seen and not np.array_equal(seen[key][0], x):
                raise UserError(f"{path}: {f} differs from the drawing of the same name in {seen[key][1]}")
            seen.setdefault(key, (x, path, f))
    keys = sorted(seen)
    X = np.stack([seen[k][0] for k in keys])
    return X, np.array([c for c, _ in keys], dtype=str), [str(seen[k][2]) for k in keys]


def _digest(image) -> bytes:
    """Exact identity of an image: equal digests mean equal bytes (a collision is not a practical concern)."""
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()


def labels_from_cache(X, characters, cache_splits) -> dict:
    """Map each character to (split, label) of the cache, by finding its drawings byte for byte in the cache.

    cache_splits: {split: (X_cache, Y_cache)}. A character whose drawings carry two cache labels, two characters
    sharing one label, or a character none of whose drawings is in the cache is an error: the images then do not
    come from the same Omniglot release or transform as the cache.
    """
    where = {}  # image digest -> (split, label); the cache repeats a few drawings, always within one class
    for split, (Xc, Yc) in cache_splits.items():
        for x, y in zip(Xc, Yc):
            where.setdefault(_digest(x), set()).add((split, int(y)))
    found = {}  # character -> {(split, label)}
    for x, c in zip(X, characters):
        found.setdefault(str(c), set()).update(where.get(_digest(x), ()))
    out, owner = {}, {}
    for c, labels in sorted(found.items()):
        if not labels:
            raise UserError(f"character {c}: none of its drawings is in the cache (another Omniglot release, or "
                            f"images not made with to_cache_pixels?)")
        if len(labels) > 1:
            raise UserError(f"character {c}: its drawings match {len(labels)} cache classes {sorted(labels)}")
        label = labels.pop()
        if label in owner:
            raise UserError(f"characters {owner[label]} and {c} both match cache class {label}")
        out[c], owner[label] = label, c
    return out


def _scaled_sizes(n, sizes) -> list:
    """Split n items in the proportions of `sizes` (largest remainders), so the counts sum to exactly n."""
    total = sum(sizes)
    exact = [n * s / total for s in sizes]
    counts = [int(e) for e in exact]
    # Hand the items lost to rounding down to the splits that lost the most (ties: the earlier split).
    for i in sorted(range(len(sizes)), key=lambda i: (counts[i] - exact[i], i))[:n - sum(counts)]:
        counts[i] += 1
    return counts


def seeded_character_split(characters, seed, sizes=CACHE_SIZES) -> dict:
    """Draw a split by character: {character: split}, the same for the same characters and seed.

    `sizes` are the numbers of characters in train, val, test (CACTUs: 1100/100/423 of Omniglot's 1623). With a
    different number of characters (a subset of the zips) they are scaled proportionally, rounding by largest
    remainder. Characters are sorted first, so their order in the input does not matter; the draw uses its own
    `np.random.default_rng(seed)` and never the global random state.
    """
    names = np.unique(np.asarray(characters, dtype=str))  # sorted and deduplicated
    if len(sizes) != len(SPLITS) or any(int(s) != s or s < 0 for s in sizes) or sum(sizes) == 0:
        raise UserError(f"split sizes must be {len(SPLITS)} non-negative integers (train, val, test), got {sizes}")
    counts = list(sizes) if len(names) == sum(sizes) else _scaled_sizes(len(names), sizes)
    if any(c == 0 < s for c, s in zip(counts, sizes)):
        raise UserError(f"{len(names)} characters are too few to split in proportion {tuple(sizes)}: "
                        f"got {dict(zip(SPLITS, counts))}")
    order = np.random.default_rng(seed).permutation(len(names))
    bounds = np.cumsum([0] + counts)
    return {str(names[i]): split for split, lo, hi in zip(SPLITS, bounds, bounds[1:]) for i in order[lo:hi]}


def build_splits(zip_paths, cache_splits=None, seed=0, pixels=to_cache_pixels) -> dict:
    """Read official zips into {split: (X uint8 (N,28,28,1), Y int64 (N,))}, one entry per split in SPLITS.

    With cache_splits ({split: (X, Y)} of the upstream cache) every character takes the split and label the cache
    gives it, so the result agrees with the cache. Without it, a `seeded_character_split` is drawn and labels
    0..n-1 are given in sorted character order, train first, then val, then test. A subset of the zips can leave
    a split empty (shape (0,28,28,1)). `pixels` makes X (e.g. `to_torchmeta_pixels`); matching against the cache
    always uses the cache's own pixels.
    """
    if isinstance(zip_paths, (str, Path)):
        zip_paths = [zip_paths]
    X, characters, files = read_official_zips(zip_paths)
    if cache_splits is not None:
        assigned = labels_from_cache(X, characters, cache_splits)
    else:
        split_of = seeded_character_split(characters, seed)
        ordered = sorted(split_of, key=lambda c: (SPLITS.index(split_of[c]), c))
        assigned = {c: (split_of[c], label) for label, c in enumerate(ordered)}
    if pixels is not to_cache_pixels:
        X, characters2, files2 = read_official_zips(zip_paths, pixels)
        assert files2 == files and np.array_equal(characters2, characters)  # same sorted drawings, other pixels
    split = np.array([assigned[str(c)][0] for c in characters])
    Y = np.array([assigned[str(c)][1] for c in characters], dtype=np.int64)
    out = {s: (X[split == s], Y[split == s]) for s in SPLITS}
    assert_disjoint_classes({s: y for s, (_, y) in out.items()})
    return out


def load_cache_splits(paths, archive=None) -> dict:
    """{split: path} of cache files (as `extract_cache_archive` returns) -> {split: (X, Y)} for `build_splits`.

    `archive`: the .tar.xz the files were extracted from. Its extracted copies sit in a temporary folder that is
    gone by the time an error is shown, so an error then names the archive and the member instead."""
    out = {}
    for split, path in paths.items():
        try:
            s = load_split(path)
        except UserError as e:
            if archive is None:
                raise
            name = Path(path).name  # extract_cache_archive keeps each member's base name, unique in the archive
            detail = str(e).removeprefix(f"{path}: ").replace(str(path), name)
            raise UserError(f"{archive}: member {name}: {detail}") from None
        out[split] = (s.X, s.Y)
    return out


def write_prepared(splits, root, name=CACHE_NAME, meta=None) -> dict:
    """Write {split: (X, Y)} as `{name}_cache_{split}.npz` files (atomically); returns {split: path}."""
    paths = {}
    for split, (X, Y) in splits.items():
        paths[split] = prepared_path(root, name, split)
        write_split(paths[split], X, Y, meta=meta)
    return paths


def download_official(dest_dir, base_url=OFFICIAL_URL) -> list:
    """Download the official images_background.zip and images_evaluation.zip into dest_dir; returns their paths.

    Each file is written to a temporary name and renamed only once complete and a valid zip, so an interrupted
    download never leaves a truncated zip behind; a zip already present is kept.
    """
    dest_dir = Path(dest_dir)
    paths = []
    for name in OFFICIAL_ZIPS:
        path = dest_dir / name
        paths.append(path)
        if zipfile.is_zipfile(path):
            continue
        url = base_url + name
        try:
            with atomic_path(path) as tmp:
                with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                    shutil.copyfileobj(response, f)
                if not zipfile.is_zipfile(tmp):  # e.g. an HTML error page from a proxy
                    raise UserError(f"{url} did not return a zip file")
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise UserError(f"could not download {url} ({e}); set OMNIGLOT_SOURCE to a local omniglot.tar.xz "
                            f"cache or to a folder holding {' and '.join(OFFICIAL_ZIPS)}") from None
    return paths


def extract_cache_archive(archive, dest_dir) -> dict:
    """Extract omniglot_cache_{train,val,test}.npz from the upstream .tar.xz into dest_dir; returns {split: path}.

    Only those three regular files are read, whatever folder they sit in inside the archive, and each is written
    to dest_dir under its own base name: member paths and links are never used, so the archive cannot write
    outside dest_dir. A file already extracted with the member's size is kept.
    """
    archive = require_file(archive)
    wanted = {prepared_path("", CACHE_NAME, s).name: s for s in SPLITS}
    paths = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                split = wanted.get(PurePosixPath(member.name).name)
                if split is None or not member.isfile():
                    continue
                if split in paths:
                    raise UserError(f"{archive}: holds {member.name} twice")
                paths[split] = path = prepared_path(dest_dir, CACHE_NAME, split)
                if path.is_file() and path.stat().st_size == member.size:
                    continue
                with atomic_path(path) as tmp, tar.extractfile(member) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (tarfile.TarError, lzma.LZMAError, EOFError) as e:
        raise UserError(f"{archive}: not a readable tar archive ({e})") from None
    except OSError as e:  # a truncated archive or an unwritable dest_dir: the message names which
        raise UserError(f"{archive}: could not extract into {dest_dir} ({e})") from None
    missing = [name for name, s in wanted.items() if s not in paths]
    if missing:
        raise UserError(f"{archive}: missing {', '.join(missing)} (is it the upstream omniglot.tar.xz?)")
    return {s: paths[s] for s in SPLITS}
