"""Where the tests find real Omniglot data, in one place: a test that needs a file absent here is skipped with the
file's path, never failed.

OMNIGLOT_SOURCE (the upstream omniglot.tar.xz) and OMNIGLOT_ZIPS (a folder of official zips) override the copies
in ../shared/data beside the repository, where CI puts them."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def omniglot_archive() -> Path:
    """The upstream omniglot.tar.xz: OMNIGLOT_SOURCE when it names one, else the shared copy."""
    source = os.environ.get("OMNIGLOT_SOURCE", "")
    path = Path(source) if source.endswith(".tar.xz") else SHARED_DATA / "omniglot" / "omniglot.tar.xz"
    if not path.is_file():
        pytest.skip(f"Omniglot cache archive not found at {path} (set OMNIGLOT_SOURCE to omniglot.tar.xz)")
    return path


def official_zip(name: str) -> Path:
    """One of the official Omniglot zips (e.g. images_background_small1.zip): OMNIGLOT_ZIPS/name, else shared."""
    folder = Path(os.environ.get("OMNIGLOT_ZIPS") or SHARED_DATA / "omniglot-official")
    path = folder / name
    if not path.is_file():
        pytest.skip(f"official Omniglot zip not found at {path} (set OMNIGLOT_ZIPS to its folder)")
    return path
