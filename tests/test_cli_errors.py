"""Bad inputs to every command line give one clear line (`error: ...`), a non-zero exit, no traceback, and
write nothing: the --out folder is not created and no existing file changes.

Every case runs in-process through `cli_main` (what `python -m <stage>` calls); one case per stage also runs as
a real `python -m` subprocess, to check the entry points themselves."""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fewshot.checkpoint import save_checkpoint
from fewshot.data import prepared_path, write_split
from fewshot.io import save_json
from tests.conftest import files_under, synthetic_images

REPO = Path(__file__).resolve().parents[1]


def _npz(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory, cfe_checkpoint):
    """Inputs good and bad, in one folder whose contents must not change."""
    from maml.maml import MAMLNet

    root = tmp_path_factory.mktemp("cli")
    X, Y = synthetic_images(3, 8, size=28, seed=0)  # 3 classes of 8 images
    e = SimpleNamespace(root=root, cfe=cfe_checkpoint, absent=root / "absent.npz")
    root.joinpath("random.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    e.random = root / "random.npz"
    e.float_images = _npz(root / "float.npz", X=np.zeros((24, 28, 28), np.float32), Y=Y)
    e.flat_images = _npz(root / "flat.npz", X=np.zeros((24, 5), np.uint8), Y=Y)
    e.not_square = _npz(root / "oblong.npz", X=np.zeros((24, 28, 32, 1), np.uint8), Y=Y)
    e.small = _npz(root / "small.npz", X=X, Y=Y)  # 24 good images
    # prepared data folders for cfe.encode: good, corrupt train, 32x32 images, corrupt val
    for name, train, val in [("good", X, X), ("corrupt", None, X), ("big", np.zeros((24, 32, 32, 1), np.uint8), X),
                             ("badval", X, None)]:
        d = root / f"data_{name}"
        for split, imgs in (("train", train), ("val", val), ("test", X)):
            p = prepared_path(d, "synth", split)
            if imgs is None:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"PK\x03\x04 not really a zip")
            else:
                write_split(p, imgs, Y)
        setattr(e, f"data_{name}", d)
    # upstream-style caches whose train and val splits share a class
    e.overlap = root / "overlap"
    for split, labels in (("train", Y), ("val", Y + 2), ("test", Y + 10)):
        write_split(prepared_path(e.overlap, "omniglot", split), X, labels)
    # checkpoints that are not a usable cfe checkpoint
    e.maml_ckpt = root / "maml_like.pt"
    torch.save({"kind": "maml", "arch": {}, "model": {}}, e.maml_ckpt)
    e.no_arch = root / "no_arch.pt"
    torch.save({"kind": "cfe", "model": {}}, e.no_arch)
    e.random_ckpt = root / "random.pt"
    e.random_ckpt.write_bytes(np.random.default_rng(1).bytes(4096))
    # a cfe.encode-like folder: a pseudo-labelled train cache with 3 clusters, its centres, and an encode.json
    # naming them (the test cache is added below)
    e.caches = root / "caches"
    e.cache = e.caches / "synth_16_K_3_train.npz"
    write_split(e.cache, X, Y, cluster_label=Y, index=np.arange(24))
    e.centres = _npz(e.caches / "synth_16_K_3_train_clusters.npz", cluster_centers=np.eye(3, 16, dtype=np.float32))
    save_json(e.caches / "encode.json", {"dataset": "synth", "dim": 16, "clusters": 3, "caches": {
        "train": e.cache.name, "train_clusters": e.centres.name, "test": "synth_16_K_3_test.npz"}})
    # an encode.json whose centres file is missing, one from before encode.json named the caches, and a folder
    # of caches without encode.json
    e.no_clusters = root / "nocentres"
    write_split(e.no_clusters / "synth_16_K_3_train.npz", X, Y, cluster_label=Y)
    save_json(e.no_clusters / "encode.json", {"dataset": "synth", "caches": {
        "train": "synth_16_K_3_train.npz", "train_clusters": "synth_16_K_3_train_clusters.npz"}})
    e.old_encode = root / "old_encode"
    write_split(e.old_encode / "synth_16_K_3_train.npz", X, Y, cluster_label=Y)
    save_json(e.old_encode / "encode.json", {"dataset": "synth", "k": 3, "clusters": 3})
    e.no_encode = root / "no_encode"
    write_split(e.no_encode / "synth_16_K_3_train.npz", X, Y, cluster_label=Y)
    e.two_centres = _npz(root / "two_centres.npz", cluster_centers=np.eye(2, 16, dtype=np.float32))  # 3 clusters
    e.val_32 = _npz(root / "val32.npz", X=np.zeros((24, 32, 32, 1), np.uint8), Y=Y)
    e.val_2 = _npz(root / "val2.npz", X=X[:16], Y=Y[:16])  # 2 classes only
    # a maml run folder: config.json + a valid best.pt, and runs whose checkpoints are wrong
    e.test_cache = root / "caches" / "synth_16_K_3_test.npz"
    write_split(e.test_cache, X, Y + 10, cluster_label=Y + 10)  # classes the run never trained on
    model = MAMLNet(1, 4, 28, 5)
    for run, ckpt in (("run", "maml"), ("run_cfe", "cfe"), ("run_random", "random"), ("run_no_test", "maml")):
        d = root / run
        own = {"test_cache": str(e.test_cache)} if run != "run_no_test" else {}  # maml.train records it
        save_json(d / "config.json", {"train_cache": str(e.cache), **own, "queries": 1, "inner_lr": 0.1})
        best = d / "checkpoints" / "best.pt"
        best.parent.mkdir()
        if ckpt == "maml":
            save_checkpoint(best, "maml", arch=model.arch, model=model.state_dict(), epoch=1,
                            selection="last epoch (no val split)", config={})
        elif ckpt == "cfe":
            best.write_bytes(cfe_checkpoint.read_bytes())
        else:
            best.write_bytes(np.random.default_rng(2).bytes(2048))
        setattr(e, run, d)
    e.bad_episodes = root / "episodes.json"
    e.bad_episodes.write_text(json.dumps({"tasks": [{"support": [{"index": 0}], "query": [{"index": 1}]}]}))
    e.junk_tar = root / "omniglot.tar.xz"
    e.junk_tar.write_bytes(b"not an xz archive" * 20)
    return e


def encode_args(e, out, checkpoint=None, data=None, *extra):
    return ["--checkpoint", checkpoint or e.cfe, "--data-dir", data or e.data_good, "--dataset", "synth",
            "--out", out, "--clusters", "3", "--niter", "2", "--min-cluster-size", "2", "--device", "cpu",
            "--threads", "1", *extra]


def maml_train_args(e, out, cache=None, *extra, centres=True):
    """--train-cache CACHE (default: the pseudo-labelled one) with --centres, or without them for centres=False."""
    source = ["--train-cache", cache or e.cache] + (["--centres", e.centres] if centres else [])
    return maml_common_args(out, *source, *extra)


def maml_caches_args(e, out, caches=None, *extra):
    """--caches DIR (default: the cfe.encode-like folder), the normal way."""
    return maml_common_args(out, "--caches", caches or e.caches, *extra)


def maml_common_args(out, *extra):
    return ["--out", out, "--epochs", "1", "--batches-per-epoch", "1", "--meta-batch", "1", "--ways", "3",
            "--shots", "1", "--queries", "1", "--hidden", "4", "--device", "cpu", "--threads", "1", *extra]


def maml_test_args(e, out, run=None, *extra):
    return ["--run", run or e.run, "--output", Path(out) / "result.json", "--tasks", "2", "--steps", "1",
            "--ways", "3", "--device", "cpu", "--threads", "1", *extra]


# id: (module, argv(env, out), what the one line must say)
CASES = {
    "train-missing-data": ("cfe.train", lambda e, o: ["--data", e.absent, "--out", o], "absent.npz: file not found"),
    "train-data-is-folder": ("cfe.train", lambda e, o: ["--data", e.root, "--out", o], "is a folder, expected a file"),
    "train-corrupt-npz": ("cfe.train", lambda e, o: ["--data", e.random, "--out", o], "not a readable .npz"),
    "train-float-images": ("cfe.train", lambda e, o: ["--data", e.float_images, "--out", o], "must be uint8"),
    "train-flat-images": ("cfe.train", lambda e, o: ["--data", e.flat_images, "--out", o], r"\(N,H,W,C\)"),
    "train-not-square": ("cfe.train", lambda e, o: ["--data", e.not_square, "--out", o, "--batch-size", "8"],
                         "must be square"),
    "train-batch-over-queue": ("cfe.train", lambda e, o: ["--data", e.small, "--out", o, "--batch-size", "16",
                                                          "--queue-size", "8"], "must not exceed --queue-size"),
    "train-too-few-images": ("cfe.train", lambda e, o: ["--data", e.small, "--out", o, "--batch-size", "64"],
                             "fewer than one batch"),
    "train-zero-epochs": ("cfe.train", lambda e, o: ["--data", e.small, "--out", o, "--epochs", "0"],
                          "argument --epochs: invalid positive_int value: '0'"),
    "train-negative-threads": ("cfe.train", lambda e, o: ["--data", e.small, "--out", o, "--threads", "-1"],
                               "argument --threads: invalid nonneg_int value: '-1'"),
    "train-unknown-device": ("cfe.train", lambda e, o: ["--data", e.small, "--out", o, "--batch-size", "8",
                                                        "--device", "gpu"], "--device gpu: not a device name"),
    "train-absent-cuda-device": ("cfe.train", lambda e, o: ["--data", e.small, "--out", o, "--batch-size", "8",
                                                            "--device", "cuda:7"], "--device cuda:7: "),
    "encode-maml-checkpoint": ("cfe.encode", lambda e, o: encode_args(e, o, e.maml_ckpt),
                               "is a 'maml' checkpoint, expected 'cfe'"),
    "encode-missing-checkpoint": ("cfe.encode", lambda e, o: encode_args(e, o, e.root / "none.pt"),
                                  "checkpoint not found"),
    "encode-checkpoint-is-folder": ("cfe.encode", lambda e, o: encode_args(e, o, e.root),
                                    "is a folder, expected a checkpoint"),
    "encode-corrupt-checkpoint": ("cfe.encode", lambda e, o: encode_args(e, o, e.random_ckpt),
                                  "not a readable checkpoint"),
    "encode-checkpoint-without-arch": ("cfe.encode", lambda e, o: encode_args(e, o, e.no_arch),
                                       r"no_arch\.pt: cfe checkpoint without 'arch' \(has kind, model\)"),
    "encode-missing-data": ("cfe.encode", lambda e, o: encode_args(e, o, None, e.root / "nodata"),
                            "synth_cache_train.npz: file not found"),
    "encode-corrupt-train": ("cfe.encode", lambda e, o: encode_args(e, o, None, e.data_corrupt), "not a readable"),
    "encode-wrong-image-size": ("cfe.encode", lambda e, o: encode_args(e, o, None, e.data_big),
                                r"images are \(32, 32, 1\), the checkpoint expects \(28, 28, 1\)"),
    "encode-corrupt-val": ("cfe.encode", lambda e, o: encode_args(e, o, None, e.data_badval),
                           "synth_cache_val.npz: not a readable"),
    "encode-clusters-too-many": ("cfe.encode", lambda e, o: encode_args(e, o, None, None, "--clusters", "25"),
                                 "--clusters 25 must be between 1 and the number of train images \\(24\\)"),
    "encode-zero-batch": ("cfe.encode", lambda e, o: encode_args(e, o, None, None, "--batch-size", "0"),
                          "argument --batch-size: invalid positive_int value: '0'"),
    "maml-more-ways-than-classes": ("maml.train", lambda e, o: maml_caches_args(e, o, None, "--ways", "5"),
                                    "need 5 classes .* this split has 3"),
    "maml-train-cache-more-ways-than-classes": ("maml.train", lambda e, o: maml_train_args(e, o, None, "--ways", "5"),
                                                "need 5 classes .* this split has 3"),
    "maml-missing-cache": ("maml.train", lambda e, o: maml_train_args(e, o, e.absent), "file not found"),
    "maml-corrupt-cache": ("maml.train", lambda e, o: maml_train_args(e, o, e.random), "not a readable .npz"),
    "maml-cache-without-pseudo-labels": ("maml.train", lambda e, o: maml_train_args(e, o, e.small),
                                         "missing array 'cluster_label'"),
    "maml-flat-images": ("maml.train", lambda e, o: maml_train_args(e, o, e.flat_images), r"\(N,H,W,C\)"),
    "maml-caches-missing-centres": ("maml.train", lambda e, o: maml_caches_args(e, o, e.no_clusters),
                                    r"nocentres/synth_16_K_3_train_clusters\.npz: file not found"),
    "maml-caches-without-encode-json": ("maml.train", lambda e, o: maml_caches_args(e, o, e.no_encode),
                                        r"no_encode/encode\.json: file not found"),
    "maml-encode-json-without-caches": ("maml.train", lambda e, o: maml_caches_args(e, o, e.old_encode),
                                        r"old_encode/encode\.json: names no train cache and cluster centres .*"
                                        r"pass --train-cache"),
    "maml-caches-and-train-cache": ("maml.train", lambda e, o: maml_caches_args(e, o, None, "--train-cache", e.cache),
                                    "argument --train-cache: not allowed with argument --caches"),
    "maml-caches-and-val-cache": ("maml.train", lambda e, o: maml_caches_args(e, o, None, "--val-cache", e.small),
                                  r"--val-cache go with --train-cache; with --caches, .*encode\.json names"),
    "maml-pem-without-centres": ("maml.train", lambda e, o: maml_train_args(e, o, None, centres=False),
                                 r"PEM needs the train cache's cluster centres: pass --centres \(or --no-pem\)"),
    "maml-fewer-centres-than-clusters": ("maml.train", lambda e, o: maml_train_args(e, o, None, centres=False)
                                         + ["--centres", e.two_centres],
                                         "cluster labels reach 2 but only 2 centres were given"),
    "maml-missing-centres": ("maml.train", lambda e, o: maml_train_args(e, o, None, "--centres", e.absent,
                                                                        centres=False),
                             r"absent\.npz: file not found"),
    "maml-corrupt-centres": ("maml.train", lambda e, o: maml_train_args(e, o, None, "--centres", e.random,
                                                                        centres=False),
                             r"random\.npz: not a readable \.npz"),
    "maml-centres-without-cluster-centers": ("maml.train", lambda e, o: maml_train_args(e, o, None, "--centres",
                                                                                        e.small, centres=False),
                                             r"small\.npz: missing array 'cluster_centers'"),
    "maml-missing-val": ("maml.train", lambda e, o: maml_train_args(e, o, None, "--val-cache", e.absent,
                                                                    "--no-pem"),
                         r"absent\.npz: file not found"),
    "maml-corrupt-val": ("maml.train", lambda e, o: maml_train_args(e, o, None, "--val-cache", e.random, "--no-pem"),
                         r"random\.npz: not a readable \.npz"),
    "maml-val-other-size": ("maml.train", lambda e, o: maml_train_args(e, o, None, "--val-cache", e.val_32,
                                                                       "--no-pem"), "differ from the train cache"),
    "maml-val-fewer-classes-than-ways": ("maml.train", lambda e, o: maml_train_args(e, o, None, "--val-cache",
                                                                                e.val_2, "--no-pem"),
                                         "need 3 classes .* this split has 2"),
    "maml-pem-as-many-clusters-as-ways": ("maml.train", lambda e, o: maml_caches_args(e, o, None,
                                                                                      "--pem-candidates", "2"),
                                          "PEM needs more clusters than ways: 3 clusters, --ways 3"),
    "maml-zero-meta-batch": ("maml.train", lambda e, o: maml_train_args(e, o, None, "--meta-batch", "0"),
                             "argument --meta-batch: invalid positive_int value: '0'"),
    "maml-supervised-with-pem": ("maml.train", lambda e, o: maml_train_args(e, o, None, "--supervised"),
                                 "--supervised .* add --no-pem"),
    "maml-pem-candidates-too-many": ("maml.train", lambda e, o: maml_caches_args(e, o, None,
                                                                                 "--pem-candidates", "5"),
                                     r"--pem-candidates 5 must be in 1\.\.2"),
    "test-missing-run": ("maml.test", lambda e, o: maml_test_args(e, o, e.root / "norun"),
                         "config.json: file not found"),
    "test-cfe-checkpoint": ("maml.test", lambda e, o: maml_test_args(e, o, e.run_cfe),
                            "is a 'cfe' checkpoint, expected 'maml'"),
    "test-corrupt-checkpoint": ("maml.test", lambda e, o: maml_test_args(e, o, e.run_random),
                                "not a readable checkpoint"),
    "test-corrupt-cache": ("maml.test", lambda e, o: maml_test_args(e, o, None, "--cache", e.random),
                           "not a readable .npz"),
    "test-float-cache": ("maml.test", lambda e, o: maml_test_args(e, o, None, "--cache", e.float_images),
                         "must be uint8"),
    "test-more-ways-than-classes": ("maml.test", lambda e, o: maml_test_args(e, o, None, "--ways", "4"),
                                    "need 4 classes"),
    "test-bad-episodes": ("maml.test", lambda e, o: maml_test_args(e, o, None, "--episodes", e.bad_episodes),
                          "integer 'label'"),
    "test-on-train-cache": ("maml.test", lambda e, o: maml_test_args(e, o, None, "--cache", e.cache),
                            "is the run's training split"),
    "test-run-without-test-cache": ("maml.test", lambda e, o: maml_test_args(e, o, e.run_no_test),
                                    r"run_no_test: the run has no test cache .*pass --cache"),
    "test-run-without-val-cache": ("maml.test", lambda e, o: maml_test_args(e, o, None, "--split", "val"),
                                   r"run: the run has no val cache .*pass --cache"),
    "test-unknown-split": ("maml.test", lambda e, o: maml_test_args(e, o, None, "--split", "train"),
                           "argument --split: invalid choice: 'train'"),
    "test-zero-tasks": ("maml.test", lambda e, o: maml_test_args(e, o, None, "--tasks", "0"),
                        "argument --tasks: invalid positive_int value: '0'"),
    "datasets-unknown-name": ("fewshot.datasets", lambda e, o: ["nosuch", "--out", o],
                              "unknown dataset 'nosuch'; known: omniglot"),
    "datasets-missing-source": ("fewshot.datasets", lambda e, o: ["omniglot", "--source", e.root / "nothere",
                                                                  "--out", o], "OMNIGLOT_SOURCE=.*nothere"),
    "datasets-overlapping-splits": ("fewshot.datasets", lambda e, o: ["omniglot", "--source", e.overlap, "--out", o],
                                    "splits 'train' and 'val' share 1 classes"),
    "datasets-junk-archive": ("fewshot.datasets", lambda e, o: ["omniglot", "--source", e.junk_tar, "--out", o],
                              "not a readable tar archive"),
}
SUBPROCESS = ["train-corrupt-npz", "encode-maml-checkpoint", "maml-more-ways-than-classes", "test-missing-run",
              "datasets-unknown-name"]


def check(code, err, message, out, before, root):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    assert lines and re.match(r"(python -m [\w.]+: )?error: ", lines[-1]), err  # ours, or argparse's usage error
    assert re.search(message, lines[-1]), (message, lines[-1])
    assert not Path(out).exists(), f"{out} was created"
    assert files_under(root) == before, "an input folder changed"


KNOWN_BUGS = {}  # case -> reason: a stage that does not validate this input yet (strict xfail)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(reason=KNOWN_BUGS[c], strict=True))
                                  if c in KNOWN_BUGS else c for c in CASES])
def test_bad_input_in_process(case, env, run_main, tmp_path):
    module, argv, message = CASES[case]
    out = tmp_path / "out"
    before = files_under(env.root)
    try:
        r = run_main(module, argv(env, out))
    except Exception as e:  # cli_main lets only non-UserError exceptions through: a traceback for the user
        pytest.fail(f"{module} {case}: {type(e).__name__}: {e} (a traceback instead of one line)")
    check(r.code, r.err, message, out, before, env.root)
    assert r.code == 2


def test_no_temporary_folder_for_the_archive_is_one_line(env, run_main, tmp_path, monkeypatch):
    # the archive is unpacked into a temporary folder before it is read: failing to make one is the user's to fix
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    out = tmp_path / "out"
    before = files_under(env.root)
    r = run_main("fewshot.datasets", ["omniglot", "--source", env.junk_tar, "--out", out])
    check(r.code, r.err, r"cannot create a temporary folder .*; set TMPDIR to a writable folder", out, before, env.root)
    assert r.code == 2


@pytest.mark.parametrize("case", SUBPROCESS)
def test_bad_input_as_a_command(case, env, tmp_path):
    module, argv, message = CASES[case]
    out = tmp_path / "out"
    before = files_under(env.root)
    p = subprocess.run([sys.executable, "-m", module, *map(str, argv(env, out))], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    check(p.returncode, p.stderr, message, out, before, env.root)
    assert p.returncode == 2 and p.stdout == ""
