"""fewshot.io: atomic writes (an interrupted writer leaves the old file and no temporary file), JSON helpers,
the metrics log and run folders."""

import json
import os
import pickle
import stat

import numpy as np
import pytest

import fewshot.io as fio
from fewshot.errors import UserError
from fewshot.io import (
    JsonlLog,
    atomic_path,
    load_json,
    prepare_run_dir,
    read_jsonl,
    remove_stale_temps,
    save_json,
    save_npz,
    save_torch,
)


def listing(folder):
    return sorted(os.listdir(folder))  # includes hidden temporary files


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
        assert not target.exists()  # not visible under its name before the block ends
    assert target.read_text() == "new" and listing(target.parent) == ["out.txt"]
    mode = stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # the usual permissions, not mkstemp's 0600


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_writer_failing_midway_keeps_the_old_file_and_leaves_no_temp(tmp_path, error):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(error):
        with atomic_path(target) as tmp:
            tmp.write_text("half writt")
            raise error("interrupted")
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["result.json"]


def test_output_folder_that_cannot_be_made_is_a_user_error(tmp_path):
    (tmp_path / "taken").write_text("a file where the folder should go")
    with pytest.raises(UserError, match="cannot create the output folder"):
        save_npz(tmp_path / "taken" / "x.npz", a=np.zeros(1))
    assert (tmp_path / "taken").read_text() == "a file where the folder should go"


def test_a_folder_in_the_files_place_or_an_unwritable_folder_is_a_user_error(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        save_json(tmp_path / "results", {"a": 1})

    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fio.tempfile, "mkstemp", refuse)  # as root, a read-only folder would still be writable
    with pytest.raises(UserError, match="cannot write here"):
        save_json(tmp_path / "results" / "x.json", {"a": 1})
    assert listing(tmp_path / "results") == []


def test_save_npz_failing_midway(tmp_path, monkeypatch):
    target = tmp_path / "cache.npz"
    save_npz(target, X=np.arange(3))
    old = target.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial zip")
        raise OSError("disk full")

    monkeypatch.setattr(fio.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_npz(target, X=np.arange(10))
    assert target.read_bytes() == old and listing(tmp_path) == ["cache.npz"]
    monkeypatch.undo()
    save_npz(target, X=np.arange(10))
    assert np.load(target)["X"].tolist() == list(range(10))  # no ".npz.npz", the name is kept
    assert listing(tmp_path) == ["cache.npz"]


def test_save_json_with_unserialisable_content_keeps_the_old_file(tmp_path):
    target = tmp_path / "config.json"
    save_json(target, {"a": 1})
    with pytest.raises(TypeError):
        save_json(target, {"a": object()})
    assert load_json(target) == {"a": 1} and listing(tmp_path) == ["config.json"]


def test_save_torch_failing_midway(tmp_path):
    target = tmp_path / "last.pt"
    save_torch(target, {"epoch": 1})
    old = target.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a lambda cannot be pickled
        save_torch(target, {"epoch": 2, "fn": lambda: 0})
    assert target.read_bytes() == old and listing(tmp_path) == ["last.pt"]


def test_load_json_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_json(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{'single': quotes}")
    with pytest.raises(UserError, match="not valid JSON"):
        load_json(bad)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="not valid JSON"):
        load_json(bad)


def test_read_jsonl_of_a_file_that_is_not_text(tmp_path):
    bad = tmp_path / "metrics.jsonl"
    bad.write_bytes(b"\xff\xfe{}\n")
    with pytest.raises(UserError, match="metrics.jsonl: not JSON lines"):
        read_jsonl(bad)


def test_versions_name_the_pillow_that_makes_the_prepared_pixels():
    import PIL

    assert fio.versions()["pillow"] == PIL.__version__


def test_jsonl_log_appends(tmp_path):
    log = JsonlLog(tmp_path / "run" / "metrics.jsonl")
    log.write(epoch=1, loss=0.5)
    JsonlLog(tmp_path / "run" / "metrics.jsonl").write(epoch=2, loss=0.25)  # a resumed run continues the file
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl") == [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]


def test_jsonl_log_after_a_kill_keeps_each_epoch_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = JsonlLog(path)
    for epoch in (1, 2, 3):
        log.write(epoch=epoch, loss=1.0 / epoch)
    with open(path, "a") as f:
        f.write('{"epoch": 4, "lo')  # killed while writing epoch 4
    assert [r["epoch"] for r in read_jsonl(path)] == [1, 2, 3]  # the torn line is left out
    JsonlLog(path, start_epoch=2).write(epoch=3, loss=0.3)  # resumed from epoch 2's checkpoint: epoch 3 again
    assert read_jsonl(path) == [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}, {"epoch": 3, "loss": 0.3}]
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(UserError, match="line 2 is not JSON"):
        read_jsonl(path)


def test_prepare_run_dir(tmp_path):
    out = tmp_path / "run"
    prepare_run_dir(out, {"lr": 0.1, "epochs": 5}, resume=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lr"] == 0.1 and {"git_commit", "versions"} <= set(cfg)
    assert {"python", "numpy", "torch", "scikit-learn"} <= set(cfg["versions"])
    before = (out / "config.json").read_text()
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        prepare_run_dir(out, {"lr": 0.1, "epochs": 5}, resume=False)
    with pytest.raises(UserError, match="settings that differ .*: lr"):
        prepare_run_dir(out, {"lr": 0.2, "epochs": 5}, resume=True)
    assert (out / "config.json").read_text() == before
    prepare_run_dir(out, {"lr": 0.1, "epochs": 9}, resume=True)  # budgets may grow
    assert load_json(out / "config.json")["epochs"] == 9
    prepare_run_dir(out, {"lr": 0.1, "epochs": 9, "threads": 1}, resume=True)  # so may the CPU threads
    assert load_json(out / "config.json")["threads"] == 1
    # an option the run folder does not record is a different setting: no defaults are guessed for old folders
    with pytest.raises(UserError, match="settings that differ .*: splits"):
        prepare_run_dir(out, {"lr": 0.1, "epochs": 9, "splits": 1}, resume=True)
    fresh = tmp_path / "fresh"
    prepare_run_dir(fresh, {"lr": 0.1}, resume=True)  # --resume on a new folder starts it
    assert (fresh / "config.json").is_file()
    # every accepted invocation is logged (the refused ones are not), with what may change between them
    log = read_jsonl(out / "invocations.jsonl")
    assert [r["resumed"] for r in log] == [False, True, True]
    assert [r["epochs"] for r in log] == [5, 9, 9] and [r.get("threads") for r in log] == [None, None, 1]
    assert all(r["git_commit"] == cfg["git_commit"] and "started" in r for r in log)
    assert read_jsonl(fresh / "invocations.jsonl")[0]["resumed"] is False


def test_provenance_is_captured_once_per_process(fake_git):
    first = fio.provenance()
    fake_git["commit"] = "made-during-the-run"
    first["git_commit"] = "edited by a caller"  # callers get copies: editing one changes nothing captured
    assert fio.provenance()["git_commit"] == "at-start"


def test_resuming_removes_the_temporary_files_of_a_killed_process(tmp_path):
    out = tmp_path / "run"
    prepare_run_dir(out, {"lr": 0.1}, resume=False)
    (out / "checkpoints").mkdir()
    stale = [out / "checkpoints" / ".last.pt.abc123.tmp", out / ".metrics.jsonl.x9.tmp"]
    kept = [out / "checkpoints" / "last.pt", out / "notes.tmp"]  # not atomic_path's temporaries
    for p in stale + kept:
        p.write_text("x")
    assert sorted(remove_stale_temps(out)) == sorted(stale)
    for p in stale:
        p.write_text("x")
    with pytest.raises(UserError):  # a refused resume touches nothing
        prepare_run_dir(out, {"lr": 0.2}, resume=True)
    assert all(p.exists() for p in stale)
    prepare_run_dir(out, {"lr": 0.1}, resume=True)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
