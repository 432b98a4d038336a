"""fewshot.torchmeta_split: a cache split again, same characters and labels, with upstream test.py's pixels."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fewshot import omniglot, torchmeta_split
from fewshot.data import load_split, prepared_path
from fewshot.errors import cli_main
from tests.datafiles import official_zip, omniglot_archive


@pytest.fixture
def small1():
    """The official subset of 136 characters, in all three of the cache's splits."""
    return official_zip("images_background_small1.zip")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("omniglot")
    omniglot.extract_cache_archive(omniglot_archive(), out)
    return out


def test_torchmeta_pixels_are_the_inverted_png_resized_bilinear():
    png = np.full((105, 105), 255, np.uint8)
    png[30:70, 50:53] = 0  # a black vertical stroke, 3 px wide, on white
    x = omniglot.to_torchmeta_pixels(Image.fromarray(png))
    ref = np.asarray(ImageOps.invert(Image.fromarray(png)).resize((28, 28), Image.BILINEAR))
    assert x.shape == (28, 28, 1) and x.dtype == np.uint8 and np.array_equal(x[..., 0], ref)
    near = omniglot.to_cache_pixels(Image.fromarray(png))
    assert 0 < x.max() < 255 and not np.array_equal(x, near)  # averaged grey, where nearest keeps 0/255


def test_split_keeps_the_cache_labels_with_torchmeta_pixels(cache_dir, tmp_path, small1):
    X_near, characters, files = omniglot.read_official_zip(small1)
    cache = omniglot.load_cache_splits({s: prepared_path(cache_dir, "omniglot", s) for s in ("train", "val", "test")})
    assigned = omniglot.labels_from_cache(X_near, characters, cache)
    test = np.array([assigned[str(c)][0] == "test" for c in characters])
    got = {}
    for pixels in ("torchmeta", "cache"):
        out = tmp_path / pixels
        torchmeta_split.main(["--zips", str(small1), "--cache-dir", str(cache_dir), "--out", str(out),
                              "--partial", "--pixels", pixels])
        got[pixels] = load_split(prepared_path(out, "omniglot", "test"))
    tm, near = got["torchmeta"], got["cache"]
    assert 0 < len(tm.Y) < len(characters)
    assert np.array_equal(tm.Y, [assigned[str(c)][1] for c in characters[test]])  # each drawing, the cache's label
    assert np.array_equal(near.Y, tm.Y) and np.array_equal(near.X, X_near[test])  # same drawings, cache pixels
    first = files[int(np.flatnonzero(test)[0])]
    with zipfile.ZipFile(small1) as zf:  # resampled independently here
        ref = omniglot.to_torchmeta_pixels(Image.open(io.BytesIO(zf.read(first))))
    assert np.array_equal(tm.X[0], ref) and not np.array_equal(tm.X, near.X)
    assert "bilinear" in tm.meta["pixels"] and "nearest" in near.meta["pixels"]


def test_incomplete_zips_and_missing_inputs_fail_in_one_line_and_write_nothing(cache_dir, tmp_path, capsys, small1):
    out = tmp_path / "tm"
    for argv, message in [
        (["--zips", str(small1), "--cache-dir", str(cache_dir), "--splits", "train"], "lack"),  # small subset
        (["--zips", str(tmp_path / "none"), "--cache-dir", str(cache_dir)], "no official Omniglot zip"),
        (["--zips", str(small1), "--cache-dir", str(tmp_path)], "file not found"),
    ]:
        with pytest.raises(SystemExit) as e:
            cli_main(torchmeta_split.main, [*argv, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert e.value.code != 0 and message in err and len(err.splitlines()) == 1, err
    assert not Path(out).exists()


def test_zips_without_a_drawing_of_the_split_fail_in_one_line_even_with_partial(cache_dir, tmp_path, capsys, small1):
    X, characters, files = omniglot.read_official_zip(small1)
    cache = omniglot.load_cache_splits({s: prepared_path(cache_dir, "omniglot", s) for s in ("train", "val", "test")})
    assigned = omniglot.labels_from_cache(X, characters, cache)
    one = next(str(c) for c in characters if assigned[str(c)][0] == "train")  # a zip of one train character
    small = tmp_path / "images_background_one.zip"
    with zipfile.ZipFile(small1) as src, zipfile.ZipFile(small, "w") as dst:
        for name, c in zip(files, characters):
            if str(c) == one:
                dst.writestr(name, src.read(name))
    out = tmp_path / "tm"
    with pytest.raises(SystemExit) as e:
        cli_main(torchmeta_split.main, ["--zips", str(small), "--cache-dir", str(cache_dir), "--out", str(out),
                                        "--splits", "test", "--partial"])
    err = capsys.readouterr().err.strip()
    assert e.value.code != 0 and "no drawing of the cache's test split" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_out_in_the_cache_dir_is_refused_before_anything_is_read_or_written(tmp_path, capsys):
    cache_dir = tmp_path / "omniglot"
    cache_dir.mkdir()
    (cache_dir / "omniglot_cache_test.npz").write_bytes(b"the prepared cache")
    (tmp_path / "link").symlink_to(cache_dir)
    for out in (cache_dir, tmp_path / "link", cache_dir / ".." / "omniglot"):  # the same folder, spelt three ways
        with pytest.raises(SystemExit) as e:
            cli_main(torchmeta_split.main, ["--zips", str(tmp_path / "zips"), "--cache-dir", str(cache_dir),
                                            "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert e.value.code != 0 and "is the --cache-dir" in err and len(err.splitlines()) == 1, err
    assert (cache_dir / "omniglot_cache_test.npz").read_bytes() == b"the prepared cache"
