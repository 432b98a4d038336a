"""Atomic writes, run folders and provenance.

Every file is written to a temporary name in the same folder and renamed into place, so an interrupted run
never leaves a half-written cache, checkpoint or result behind (rename is atomic on POSIX file systems).
"""

import copy
import functools
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fewshot.errors import UserError, require_file


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a file where the output folder should be
        raise UserError(f"{path.parent}: cannot create the output folder ({e.strerror})") from None
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name to write")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # e.g. a read-only folder
        raise UserError(f"{path.parent}: cannot write here ({e.strerror})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield Path(tmp)
        try:
            os.replace(tmp, path)
        except OSError as e:  # e.g. a folder created at `path` meanwhile
            raise UserError(f"{path}: cannot write it ({e.strerror})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npz(path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object stops numpy from appending ".npz" to the temp name
            np.savez(f, **arrays)


def mmap_npz_array(path, key: str):
    """The array `key` of an .npz file as a copy-on-write memory map, or None where it cannot be mapped (a
    compressed member, an object array). np.savez stores members uncompressed, so an array's bytes lie in the file
    as they are: past the member's local zip header and its .npy header. Writes to the map stay in memory."""
    import zipfile

    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        info = z.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        f.seek(info.header_offset)
        local = f.read(30)  # the local header: its name and extra-field lengths may differ from the central one's
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        fmt = np.lib.format
        read_header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
            return None
        return np.memmap(path, dtype=dtype, mode="c", shape=shape, order="F" if fortran else "C", offset=f.tell())


def save_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_torch(path, obj) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_json(path) -> dict:
    path = require_file(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, read in blocks (a checkpoint need not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import PIL
    import sklearn
    import torch

    # Pillow's resize filters make the prepared pixels (fewshot.omniglot, the digits), so its version is recorded
    out = {"python": platform.python_version(), "numpy": np.__version__, "torch": str(torch.__version__),
           "scikit-learn": sklearn.__version__, "pillow": PIL.__version__, "platform": platform.platform()}
    try:
        import faiss

        out["faiss"] = faiss.__version__
    except ImportError:
        out["faiss"] = None
    return out


@functools.cache
def _provenance() -> dict:
    return {"git_commit": git_commit(), "versions": versions()}


def provenance() -> dict:
    """The git commit and package versions of this process, captured at the first call and reused after.

    Python reads the code when a stage starts, so the commit at that moment names the code that runs; asking git
    again when a long run writes its results would name any commit made meanwhile. Each stage calls this as it
    starts (prepare_run_dir does), so its checkpoints and results all name the code that produced them."""
    return copy.deepcopy(_provenance())


class JsonlLog:
    """Metrics as JSON lines, one object per line, appended (a resumed run continues the same file).

    A torn last line (a run killed while writing it) is dropped before appending. `start_epoch`, the epoch a
    training run starts from, also drops rows of later epochs: a run killed after logging an epoch but before
    saving its checkpoint runs that epoch again, and each epoch should appear once."""

    def __init__(self, path, start_epoch: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            rows = [r for r in read_jsonl(self.path) if start_epoch is None or r.get("epoch", 0) <= start_epoch]
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
            if text != self.path.read_text():
                with atomic_path(self.path) as tmp:
                    tmp.write_text(text)

    def write(self, **row) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()


def read_jsonl(path) -> list:
    """The rows of a JSON-lines file; a torn last line (a run killed while writing it) is left out."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as e:  # as load_json: a file that is not text is bad input, not a bug
        raise UserError(f"{path}: not JSON lines ({e})") from None
    lines = text.split("\n")  # the part after the last newline is complete only if empty
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # no newline after it: cut short
                break
            raise UserError(f"{path}: line {n} is not JSON") from None
    return rows


# settings a resumed run may change: budgets, where it runs and how often it keeps snapshots (not what it computes)
RESUMABLE_CHANGES = ("epochs", "resume", "device", "threads", "save_every")


def remove_stale_temps(folder) -> list:
    """Delete the temporary files atomic_path leaves behind when a process is killed (SIGKILL gives no chance to
    clean up) in `folder` and its subfolders; returns their paths. Called as a run (re)starts, when no other
    process writes into its folder."""
    stale = [p for p in Path(folder).rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


def prepare_run_dir(out, config: dict, resume: bool, may_change=RESUMABLE_CHANGES) -> Path:
    """Create a run folder and write its config.json (resolved arguments + git commit + package versions).

    An existing run is continued only with --resume and only with the same settings (budgets may grow); the
    temporary files of a killed earlier process are removed first. config.json holds the latest invocation's
    settings; invocations.jsonl keeps one line per invocation (time, git commit, the settings that may change on
    resume), so a run resumed with other threads or code says so."""
    out = Path(out)
    cfg_path = out / "config.json"
    resuming = cfg_path.exists()
    if resuming:
        if not resume:
            raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        old = load_json(cfg_path)
        changed = sorted(k for k in config if k not in may_change and old.get(k) != config[k])
        if changed:
            raise UserError(f"--resume with settings that differ from {cfg_path}: {', '.join(changed)}")
        remove_stale_temps(out)
    prov = provenance()
    save_json(cfg_path, {**config, **prov})
    JsonlLog(out / "invocations.jsonl").write(
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"), resumed=resuming,
        git_commit=prov["git_commit"], **{k: config[k] for k in may_change if k in config})
    return out
