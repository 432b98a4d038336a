"""End-to-end smoke run on a small subset of the real Omniglot cache: cfe.train -> cfe.encode -> maml.train --caches
(PEM) -> maml.test on the run's test and val splits. Skipped when the upstream omniglot.tar.xz is not available
(set OMNIGLOT_SOURCE to it)."""

import json

import numpy as np
import pytest

from cfe import encode as cfe_encode
from cfe import train as cfe_train
from fewshot.data import load_split, prepared_path, write_split
from fewshot.omniglot import extract_cache_archive
from maml import test as maml_test
from maml import train as maml_train
from tests.datafiles import omniglot_archive

# characters kept per split: the first ones of each (train labels 0-1099, val 1100-1199, test 1200-1622)
SUBSET = {"train": 100, "val": 20, "test": 40}
K = 50


@pytest.mark.slow
def test_omniglot_subset_end_to_end(tmp_path):
    src = omniglot_archive()
    full = extract_cache_archive(src, tmp_path / "full")
    data = tmp_path / "data"
    for split, n_chars in SUBSET.items():
        sp = load_split(full[split])
        keep = np.isin(sp.Y, np.unique(sp.Y)[:n_chars])
        write_split(prepared_path(data, "omniglot", split), sp.X[keep], sp.Y[keep])
        assert len(np.unique(sp.Y[keep])) == n_chars and keep.sum() == 20 * n_chars
    runs = tmp_path / "runs"
    common = ["--threads", "1", "--device", "cpu"]

    cfe_train.main(["--data", str(prepared_path(data, "omniglot", "train")), "--out", str(runs / "cfe"),
                    "--epochs", "1", "--batch-size", "256", "--queue-size", "1024", "--hidden", "32", *common])
    cfe_encode.main(["--checkpoint", str(runs / "cfe/checkpoints/last.pt"), "--data-dir", str(data),
                     "--dataset", "omniglot", "--out", str(runs / "caches"), "--clusters", str(K), "--niter", "20",
                     *common])
    encoded = json.loads((runs / "caches/encode.json").read_text())
    assert (encoded["dataset"], encoded["dim"], encoded["clusters"]) == ("omniglot", 64, K)
    caches = {s: runs / "caches" / name for s, name in encoded["caches"].items()}
    assert set(caches) == {"train", "val", "test", "train_clusters", "train_emb"}
    maml_train.main(["--caches", str(runs / "caches"), "--out", str(runs / "maml"), "--epochs", "2",
                     "--batches-per-epoch", "4", "--meta-batch", "4", "--hidden", "32", "--pem-warmup", "1",
                     "--pem-eta", "0", "--val-tasks", "20", "--val-steps", "3", *common])
    maml_test.main(["--run", str(runs / "maml"), "--tasks", "100", "--steps", "5", *common])
    maml_test.main(["--run", str(runs / "maml"), "--split", "val", "--tasks", "20", "--steps", "5", *common])

    expected = ["cfe/config.json", "cfe/metrics.jsonl", "cfe/checkpoints/last.pt", "cfe/checkpoints/epoch_0001.pt",
                "caches/encode.json", "caches/config.json", "maml/config.json", "maml/metrics.jsonl",
                "maml/checkpoints/last.pt", "maml/checkpoints/best.pt", "maml/results/test_5w1s.json",
                "maml/results/val_5w1s.json"]
    expected += [str(p.relative_to(runs)) for p in caches.values()]
    missing = [p for p in expected if not (runs / p).is_file()]
    assert not missing, missing

    # the pseudo-labelled train cache: K clusters, each large enough for a task
    train = load_split(caches["train"])
    counts = np.bincount(train.cluster_label)
    assert len(counts) == K and counts.min() >= 20
    test = load_split(caches["test"])
    assert np.array_equal(test.cluster_label, test.Y) and len(np.unique(test.Y)) == SUBSET["test"]

    res = json.loads((runs / "maml/results/test_5w1s.json").read_text())
    assert isinstance(res["accuracy"], float) and 0.2 < res["accuracy"] <= 1.0, res["accuracy"]
    assert res["tasks"] == 100 and res["ci95"] > 0
    assert res["model_selection"] == "best val accuracy"
    assert res["split"] == "test" and res["cache"] == str(caches["test"])
    val = json.loads((runs / "maml/results/val_5w1s.json").read_text())
    assert val["split"] == "val" and val["cache"] == str(caches["val"]) and val["tasks"] == 20
    assert 0.2 < val["accuracy"] <= 1.0, val["accuracy"]
    assert not list((runs / "maml/results").glob("*.partial.json"))  # removed once a test completes
    cfg = json.loads((runs / "maml/config.json").read_text())
    assert cfg["dataset"] == "omniglot"
    assert {k: cfg[k] for k in ("train_cache", "val_cache", "test_cache", "centres")} == {
        "train_cache": str(caches["train"]), "val_cache": str(caches["val"]), "test_cache": str(caches["test"]),
        "centres": str(caches["train_clusters"])}
    metrics = [json.loads(line) for line in (runs / "maml/metrics.jsonl").read_text().splitlines()]
    assert [m["pem_rebuilt_batches"] for m in metrics] == [0, 4]
    quality = json.loads((runs / "caches/encode.json").read_text())["pseudo_label_quality"]
    assert quality["clusters"] == K and 0 < quality["nmi"] <= 1

    for cfg in ("cfe/config.json", "caches/config.json", "maml/config.json"):
        c = json.loads((runs / cfg).read_text())
        assert isinstance(c["git_commit"], str) and c["git_commit"], cfg
        assert c["versions"]["torch"] and c["versions"]["numpy"] and c["versions"]["python"], cfg
