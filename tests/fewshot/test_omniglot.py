"""Omniglot reader: the official PNGs, read our way, must reproduce the upstream cache byte for byte."""

import io
import struct
import tarfile
import urllib.error
import zipfile

import numpy as np
import pytest
from PIL import Image

from fewshot import omniglot
from fewshot.data import SPLITS, load_split
from fewshot.errors import UserError
from tests.datafiles import official_zip, omniglot_archive

SMALL1, SMALL2 = "images_background_small1.zip", "images_background_small2.zip"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """{split: (X, Y)} of the upstream cache, extracted once for the module."""
    paths = omniglot.extract_cache_archive(omniglot_archive(), tmp_path_factory.mktemp("omniglot"))
    return omniglot.load_cache_splits(paths)


@pytest.fixture(scope="module")
def where(cache):
    """Cache image bytes -> {(split, label)}."""
    out = {}
    for split, (X, Y) in cache.items():
        for x, y in zip(X, Y):
            out.setdefault(x.tobytes(), set()).add((split, int(y)))
    return out


@pytest.fixture(scope="module")
def small1():
    return omniglot.read_official_zip(official_zip(SMALL1))


def test_cache_archive_has_the_upstream_splits(cache):
    assert {s: len(cache[s][0]) for s in SPLITS} == {"train": 22000, "val": 2000, "test": 8460}
    assert [(int(y.min()), int(y.max())) for _, y in cache.values()] == [(0, 1099), (1100, 1199), (1200, 1622)]
    assert all(x.dtype == np.uint8 and x.shape[1:] == (28, 28, 1) for x, _ in cache.values())


def test_small1_reads_sorted_and_every_drawing_is_in_the_cache(small1, where):
    X, characters, files = small1
    assert X.shape == (2720, 28, 28, 1) and X.dtype == np.uint8
    assert len(np.unique(characters)) == 136 and len(files) == 2720
    assert list(characters) == sorted(characters) and characters[0] == "Balinese/character01"
    assert files[0] == "images_background_small1/Balinese/character01/0108_01.png"
    missing = [f for x, f in zip(X, files) if x.tobytes() not in where]
    assert not missing, f"{len(missing)} drawings not in the cache, e.g. {missing[:3]}"


def test_each_small1_character_maps_to_one_cache_label(small1, cache):
    X, characters, _ = small1
    labels = omniglot.labels_from_cache(X, characters, cache)
    assert sorted(labels) == sorted(set(characters)) and len(labels) == 136
    assert len(set(labels.values())) == 136  # no two characters share a cache class
    # The CACTUs split is by character, not by alphabet: some alphabet has characters in several splits.
    splits_of_alphabet = {}
    for c, (split, _) in labels.items():
        splits_of_alphabet.setdefault(c.split("/")[0], set()).add(split)
    assert max(len(s) for s in splits_of_alphabet.values()) > 1


def _first_pngs(path, n):
    with zipfile.ZipFile(path) as zf:
        names = sorted(m for m in zf.namelist() if m.endswith(".png"))[:n]
        return [Image.open(io.BytesIO(zf.read(m))) for m in names]


def test_only_nearest_and_inversion_reproduce_the_cache(where):
    images = _first_pngs(official_zip(SMALL1), 40)
    assert all(omniglot.to_cache_pixels(im).tobytes() in where for im in images)
    for resample in (Image.BILINEAR, Image.BICUBIC, Image.LANCZOS, Image.BOX):
        other = [(255 - np.asarray(im.convert("L").resize((28, 28), resample)))[..., None] for im in images]
        assert sum(x.tobytes() in where for x in other) == 0, resample
    not_inverted = [255 - omniglot.to_cache_pixels(im) for im in images]
    assert sum(x.tobytes() in where for x in not_inverted) == 0


def test_build_splits_with_the_cache_reproduces_its_labels(cache, where):
    splits = omniglot.build_splits([official_zip(SMALL1)], cache_splits=cache)
    assert sum(len(y) for _, y in splits.values()) == 2720
    for split, (X, Y) in splits.items():
        assert X.dtype == np.uint8 and Y.dtype == np.int64
        for x, y in zip(X, Y):
            assert (split, int(y)) in where[x.tobytes()]


def test_two_overlapping_zips_read_each_drawing_once(cache):
    X, characters, _ = omniglot.read_official_zips([official_zip(SMALL1), official_zip(SMALL2)])
    n1 = len(omniglot.read_official_zip(official_zip(SMALL1))[0])
    n2 = len(omniglot.read_official_zip(official_zip(SMALL2))[0])
    assert len(X) < n1 + n2  # the two subsets share 50 Greek and Latin characters
    assert len({(c, x.tobytes()) for x, c in zip(X, characters)}) == len(X)
    labels = omniglot.labels_from_cache(X, characters, cache)
    assert len(labels) == len(set(characters)) == len(set(labels.values()))


def test_build_splits_without_cache_is_seeded_and_labels_train_first(tmp_path):
    a = omniglot.build_splits(official_zip(SMALL1), seed=3)
    b = omniglot.build_splits(official_zip(SMALL1), seed=3)
    for s in SPLITS:
        np.testing.assert_array_equal(a[s][0], b[s][0])
        np.testing.assert_array_equal(a[s][1], b[s][1])
    ys = [np.unique(a[s][1]) for s in SPLITS]
    assert [len(y) for y in ys] == [92, 8, 36]  # 136 characters in proportion 1100:100:423
    np.testing.assert_array_equal(np.concatenate(ys), np.arange(136))
    paths = omniglot.write_prepared(a, tmp_path)
    assert paths["val"].name == "omniglot_cache_val.npz"
    np.testing.assert_array_equal(load_split(paths["val"]).Y, a["val"][1])


def test_seeded_character_split_is_deterministic_disjoint_and_complete():
    names = [f"Alphabet{i % 50}/character{i:04d}" for i in range(1623)]
    split = omniglot.seeded_character_split(names, seed=0)
    assert split == omniglot.seeded_character_split(list(reversed(names)) + names[:10], seed=0)
    assert split != omniglot.seeded_character_split(names, seed=1)
    assert sorted(split) == sorted(names)  # every character, each in exactly one split
    assert [sum(v == s for v in split.values()) for s in SPLITS] == [1100, 100, 423]
    state = np.random.get_state()[1].copy()
    omniglot.seeded_character_split(names, seed=5)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global random state untouched
    small = omniglot.seeded_character_split(names[:200], seed=0, sizes=(60, 20, 20))
    assert [sum(v == s for v in small.values()) for s in SPLITS] == [120, 40, 40]
    with pytest.raises(UserError, match="too few"):
        omniglot.seeded_character_split(names[:5], seed=0)


def test_bad_zip_inputs_raise_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        omniglot.read_official_zip(tmp_path / "absent.zip")
    text = tmp_path / "notes.zip"
    text.write_text("not a zip")
    with pytest.raises(UserError, match="not a zip"):
        omniglot.read_official_zip(text)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("top/readme.txt", "no drawings")
    with pytest.raises(UserError, match="no PNG"):
        omniglot.build_splits([empty])
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("top/Alpha/character01/0001_01.png", b"not a png")
    with pytest.raises(UserError, match="not a readable PNG"):
        omniglot.read_official_zip(broken)


def _damaged_zip(path, damage):
    """A deflated zip of one drawing, then `damage`(bytearray of the zip) applied to its bytes."""
    member = "top/Alpha/character01/0001_01.png"
    png = io.BytesIO()
    Image.fromarray(np.full((105, 105), 255, np.uint8)).save(png, format="PNG")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, png.getvalue())
    data = bytearray(path.read_bytes())
    damage(data, member)
    path.write_bytes(bytes(data))
    return path


def _deflate_stream(data, member):  # the compressed bytes follow the 30-byte local header and the name
    data[30 + len(member):38 + len(member)] = b"\xff" * 8


def _method(data, member):  # compression method 99 in the central directory, which zipfile cannot read
    at = data.index(b"PK\x01\x02")
    data[at + 10:at + 12] = struct.pack("<H", 99)


def _encrypted(data, member):  # the "encrypted" flag bit in the central directory
    data[data.index(b"PK\x01\x02") + 8] |= 1


@pytest.mark.parametrize("damage, message", [(_deflate_stream, "decompressing"), (_method, "compression method"),
                                             (_encrypted, "encrypted")])
def test_unreadable_zip_member_names_the_zip_and_the_member(tmp_path, damage, message):
    path = _damaged_zip(tmp_path / "images_background.zip", damage)
    with pytest.raises(UserError, match=f"images_background.zip: member top/Alpha/character01/0001_01.png "
                                        f"cannot be read .*{message}"):
        omniglot.read_official_zip(path)


def test_bad_cache_from_an_archive_names_the_archive_and_member(tmp_path):
    scratch = tmp_path / "scratch"  # stands for the temporary extraction folder, gone when the error is shown
    paths = omniglot.extract_cache_archive(_tar(tmp_path / "o.tar.xz", {f"omniglot/omniglot_cache_{s}.npz": b"x"
                                                                        for s in SPLITS}), scratch)
    with pytest.raises(UserError) as e:
        omniglot.load_cache_splits(paths, archive=tmp_path / "o.tar.xz")
    assert str(e.value).startswith(f"{tmp_path / 'o.tar.xz'}: member omniglot_cache_train.npz: not a readable .npz")
    assert str(scratch) not in str(e.value)
    with pytest.raises(UserError) as e:  # without the archive, the file itself is named
        omniglot.load_cache_splits(paths)
    assert str(e.value).startswith(f"{paths['train']}: not a readable .npz")


def test_labels_from_cache_rejects_unknown_and_mixed_characters(cache):
    X = cache["train"][0]
    Y = cache["train"][1]
    noise = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    with pytest.raises(UserError, match="none of its drawings"):
        omniglot.labels_from_cache(noise, np.array(["A/character01"] * 2), cache)
    two = np.stack([X[0], X[np.argmax(Y != Y[0])]])
    with pytest.raises(UserError, match="2 cache classes"):
        omniglot.labels_from_cache(two, np.array(["A/character01"] * 2), cache)
    same = np.flatnonzero(Y == Y[0])[:2]  # two drawings of one cache class, given as two characters
    with pytest.raises(UserError, match="both match"):
        omniglot.labels_from_cache(X[same], np.array(["A/character01", "A/character02"]), cache)


def _tar(path, members):
    with tarfile.open(path, "w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_cache_archive_rejects_bad_archives_and_stays_in_dest(tmp_path):
    with pytest.raises(UserError, match="not found"):
        omniglot.extract_cache_archive(tmp_path / "absent.tar.xz", tmp_path / "out")
    junk = tmp_path / "junk.tar.xz"
    junk.write_bytes(b"not an archive" * 10)
    with pytest.raises(UserError, match="not a readable tar"):
        omniglot.extract_cache_archive(junk, tmp_path / "out")
    partial = _tar(tmp_path / "partial.tar.xz", {"omniglot/omniglot_cache_train.npz": b"x"})
    with pytest.raises(UserError, match="missing omniglot_cache_val.npz, omniglot_cache_test.npz"):
        omniglot.extract_cache_archive(partial, tmp_path / "out")
    names = {f"../../evil/omniglot_cache_{s}.npz": s.encode() for s in SPLITS}
    paths = omniglot.extract_cache_archive(_tar(tmp_path / "evil.tar.xz", names), tmp_path / "out")
    assert not (tmp_path.parent / "evil").exists() and not (tmp_path / "evil").exists()
    assert {s: p.read_bytes() for s, p in paths.items()} == {s: s.encode() for s in SPLITS}
    assert all(p.parent == tmp_path / "out" for p in paths.values())


def test_download_failure_is_a_user_error_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(omniglot.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="could not download .*images_background.zip.*OMNIGLOT_SOURCE"):
        omniglot.download_official(tmp_path / "dl")
    assert not any((tmp_path / "dl").iterdir())


def test_download_writes_zips_and_rejects_non_zips(tmp_path):
    src = tmp_path / "mirror"
    src.mkdir()
    for name in omniglot.OFFICIAL_ZIPS:
        (src / name).write_bytes(official_zip(SMALL1).read_bytes())
    paths = omniglot.download_official(tmp_path / "dl", base_url=src.as_uri() + "/")
    assert [p.name for p in paths] == list(omniglot.OFFICIAL_ZIPS)
    assert all(p.read_bytes() == official_zip(SMALL1).read_bytes() for p in paths)
    (src / "images_background.zip").write_text("<html>rate limited</html>")
    with pytest.raises(UserError, match="did not return a zip"):
        omniglot.download_official(tmp_path / "dl2", base_url=src.as_uri() + "/")
    assert not any((tmp_path / "dl2").iterdir())
