"""cfe.quality: clustering scores of an embedding over several splits together, at K = their number of classes."""

import numpy as np

from fewshot.io import load_json
from tests.fewshot.readers import assert_error


def test_scores_the_splits_together(tmp_path, run_main, prepared, cfe_checkpoint):
    out = tmp_path / "quality.json"
    r = run_main("cfe.quality", ["--checkpoint", cfe_checkpoint, "--data-dir", prepared.root, "--dataset",
                                 prepared.name, "--splits", "train", "test", "--out", out])
    assert r.code == 0, r.err
    q = load_json(out)
    classes = len(np.unique(np.concatenate([prepared.Y["train"], prepared.Y["test"]])))
    assert q["clusters"] == classes and q["images"] == len(prepared.Y["train"]) + len(prepared.Y["test"])
    assert q["splits"] == ["train", "test"] and all(0 <= q[m] <= 1 for m in ("acc", "nmi", "purity"))
    assert f"K = {classes} classes" in r.out and "git_commit" in q


def test_errors(tmp_path, run_main, prepared, cfe_checkpoint):
    r = run_main("cfe.quality", ["--checkpoint", cfe_checkpoint, "--data-dir", tmp_path, "--dataset", "none"])
    assert_error(r, "none_cache_train.npz")
