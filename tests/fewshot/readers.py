"""What the reader tests share: small images in real formats, and how a preparation and its errors are run."""

import io

import numpy as np
from PIL import Image

from fewshot.data import SPLITS, load_split, prepared_path

WNIDS = {"train": ["n03", "n01", "n02"], "val": ["n05", "n04", "n06"], "test": ["n09", "n08", "n07"]}
CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def colour(i):
    """A solid colour per class, far enough apart that JPEG and resizing keep them apart."""
    return (40 * (i % 6) + 20, 90 * (i % 3) + 10, 25 * (i % 10) + 5)


def image_bytes(rgb, size=(20, 16), fmt="JPEG", mode="RGB"):
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).convert(mode).save(buf, fmt)
    return buf.getvalue()


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def prepare(run_main, name, source, out):
    r = run_main("fewshot.datasets", [name, "--source", source, "--out", out])
    assert r.code == 0, r.err
    return {s: load_split(prepared_path(out, name, s)) for s in SPLITS if prepared_path(out, name, s).is_file()}


def assert_error(r, *fragments):
    """A UserError: exit code 2 and one line on stderr holding every fragment."""
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err
    assert r.err.startswith("error: ") and all(f in r.err for f in fragments), r.err


def rgb_means(split):
    return {int(y): split.X[split.Y == y].reshape(-1, 3).mean(0) for y in np.unique(split.Y)}


