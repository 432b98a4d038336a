"""fewshot.report: the pipeline table is built from each stage's own outputs."""

import pytest

from fewshot.errors import UserError, cli_main
from fewshot.io import JsonlLog, load_json, save_json
from fewshot.report import main, summarise, to_markdown


def make_pipeline(root):
    JsonlLog(root / "cfe" / "metrics.jsonl").write(epoch=1, seconds=60)
    JsonlLog(root / "cfe" / "metrics.jsonl").write(epoch=2, seconds=60)
    save_json(root / "caches" / "encode.json", {"pseudo_label_quality": {"ari": 0.5, "nmi": 0.9}, "seconds": 30})
    for name, pem, acc in (("maml-pem", True, 0.9), ("maml-nopem", False, 0.8)):
        save_json(root / name / "config.json", {"pem": pem, "epochs": 20})
        JsonlLog(root / name / "metrics.jsonl").write(epoch=1, seconds=120)
        for shots in (1, 5):
            save_json(root / name / "results" / f"test_5w{shots}s.json",
                      {"ways": 5, "shots": shots, "accuracy": acc + shots / 100, "ci95": 0.004, "tasks": 1000,
                       "steps": 10, "seconds": 90})


def test_summary_reads_every_stage(tmp_path):
    make_pipeline(tmp_path)
    rows = {r["method"]: r for r in summarise(tmp_path)}
    assert set(rows) == {"MAML + PEM", "MAML (PEM off)"}
    pem = rows["MAML + PEM"]
    assert pem["5w1s"]["accuracy"] == pytest.approx(0.91) and pem["5w5s"]["accuracy"] == pytest.approx(0.95)
    assert pem["seconds"] == {"cfe": 120, "encode": 30, "train": 120, "test": 180}
    assert pem["ari"] == 0.5 and pem["nmi"] == 0.9
    table = to_markdown(list(rows.values()))
    assert "| maml-pem | MAML + PEM | test | 20 | 91.00 ± 0.40 % (1000 tasks, 10 steps) | 95.00 ± 0.40 %" in table
    assert "| 2.0 | 0.5 | 2.0 | 3.0 |" in table


def test_pseudo_labels_made_otherwise_than_the_papers_are_named(tmp_path):
    make_pipeline(tmp_path)
    save_json(tmp_path / "caches" / "encode.json", {"pseudo_label_quality": {"ari": 0.5, "nmi": 0.9}, "seconds": 30,
                                                    "knn_smooth": 5, "partitions": 10})
    assert {r["method"] for r in summarise(tmp_path)} == {
        "MAML + PEM, 10 k-means partitions, embeddings smoothed over 5 neighbours",
        "MAML (PEM off), 10 k-means partitions, embeddings smoothed over 5 neighbours"}
    save_json(tmp_path / "caches" / "encode.json", {"pseudo_label_quality": {"ari": 0.5, "nmi": 0.9}, "seconds": 30,
                                                    "knn_smooth": 0, "partitions": 1})
    assert {r["method"] for r in summarise(tmp_path)} == {"MAML + PEM", "MAML (PEM off)"}


def test_an_epoch_logged_twice_counts_once(tmp_path):
    make_pipeline(tmp_path)
    JsonlLog(tmp_path / "cfe" / "metrics.jsonl").write(epoch=2, seconds=70)  # epoch 2 again, after a kill
    pem = {r["method"]: r for r in summarise(tmp_path)}["MAML + PEM"]
    assert pem["seconds"]["cfe"] == 130


def test_results_on_other_caches_stay_out_of_the_table(tmp_path):
    make_pipeline(tmp_path)
    save_json(tmp_path / "maml-pem" / "results" / "test_5w1s_omniglot_cache_test.json",
              {"ways": 5, "shots": 1, "accuracy": 0.5, "ci95": 0.01, "tasks": 1000, "steps": 50, "seconds": 90})
    pem = {r["method"]: r for r in summarise(tmp_path)}["MAML + PEM"]
    assert pem["5w1s"]["accuracy"] == pytest.approx(0.91) and pem["seconds"]["test"] == 180


def test_a_test_of_one_task_shows_no_interval(tmp_path):
    make_pipeline(tmp_path)
    save_json(tmp_path / "maml-pem" / "results" / "test_5w1s.json",  # as maml.test --tasks 1 writes it
              {"ways": 5, "shots": 1, "accuracy": 0.8, "ci95": None, "tasks": 1, "steps": 10, "seconds": 1})
    table = to_markdown(summarise(tmp_path))
    assert "| 80.00 % (no interval) (1 tasks, 10 steps) |" in table


def test_main_writes_summary_files(tmp_path, capsys):
    make_pipeline(tmp_path)
    main([str(tmp_path)])
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "summary.md").is_file()
    assert "MAML (PEM off)" in capsys.readouterr().out


def test_folder_without_runs_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no run folders with results"):
        summarise(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        summarise(tmp_path / "missing")


def test_supervised_reference_runs_are_labelled(tmp_path):
    make_pipeline(tmp_path)
    save_json(tmp_path / "maml-true" / "config.json", {"pem": False, "supervised": True, "epochs": 60})
    save_json(tmp_path / "maml-true" / "results" / "test_5w1s.json", {"ways": 5, "shots": 1, "accuracy": 0.99,
              "ci95": 0.001, "tasks": 1000, "steps": 10, "seconds": 9})
    rows = {r["method"]: r for r in summarise(tmp_path)}
    assert rows["MAML, true labels (supervised)"]["epochs"] == 60
    table = to_markdown(list(rows.values()))
    assert "| maml-true | MAML, true labels (supervised) | test | 60 | 99.00 ± 0.10 % (1000 tasks, 10 steps) | - |" \
        in table


def test_val_and_test_results_are_separate_rows(tmp_path):
    make_pipeline(tmp_path)
    save_json(tmp_path / "maml-pem" / "results" / "val_5w1s.json", {"ways": 5, "shots": 1, "accuracy": 0.7,
              "ci95": 0.01, "tasks": 1000, "steps": 10, "seconds": 9})
    rows = [(r["run"].rsplit("/", 1)[1], r["split"]) for r in summarise(tmp_path)]
    assert rows == [("maml-nopem", "test"), ("maml-pem", "val"), ("maml-pem", "test")]
    val = summarise(tmp_path)[1]
    assert val["5w1s"]["accuracy"] == 0.7 and "5w5s" not in val and val["seconds"]["test"] == 9


def test_the_pixel_baseline_gives_a_paired_difference_on_the_same_tasks(tmp_path):
    make_pipeline(tmp_path)
    common = {"ways": 5, "shots": 1, "ci95": 0.1, "tasks": 4, "steps": 0, "seed": 0, "tasks_sha256": "ab12"}
    save_json(tmp_path / "pixels" / "config.json", {"method": "raw pixels"})
    save_json(tmp_path / "pixels" / "results" / "test_5w1s.json", {**common, "accuracy": 0.5,
              "per_task_accuracy": [0.4, 0.6, 0.4, 0.6]})
    save_json(tmp_path / "maml-pem" / "results" / "test_5w1s.json", {**common, "accuracy": 0.7, "steps": 10,
              "cache": "/b/x_test.npz", "per_task_accuracy": [0.6, 0.8, 0.6, 0.8]})
    save_json(tmp_path / "maml-nopem" / "results" / "test_5w1s.json", {**common, "accuracy": 0.7, "steps": 10,
              "tasks_sha256": "cd34", "per_task_accuracy": [0.6, 0.8, 0.6, 0.8]})
    rows = summarise(tmp_path)
    pixels = next(r for r in rows if r["method"] == "raw pixels")
    assert pixels["ari"] is None and pixels["seconds"]["cfe"] is None and pixels["epochs"] is None
    table = to_markdown(rows)
    assert "- maml-pem - pixels, test 5-way 1-shot: +20.00 ± 0.00 points" in table
    assert "maml-nopem - pixels" not in table  # other tasks: no paired difference


def test_compare_gives_the_paired_difference_of_two_results_on_the_same_tasks(tmp_path, capsys):
    common = {"split": "val", "ways": 5, "shots": 1, "queries": 5, "tasks": 4, "seed": 0, "ci95": 0.1}
    save_json(tmp_path / "a.json", {**common, "accuracy": 0.75, "per_task_accuracy": [0.8, 0.6, 1.0, 0.6]})
    save_json(tmp_path / "b.json", {**common, "accuracy": 0.6, "per_task_accuracy": [0.6, 0.6, 0.8, 0.4]})
    main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    # differences 0.2, 0, 0.2, 0.2: mean 0.15, sd 0.1, half-width 1.96 * 0.1 / 2
    assert capsys.readouterr().out == "val 5-way 1-shot, 4 tasks: 75.00 - 60.00 % = +15.00 ± 9.80 points (paired)\n"
    save_json(tmp_path / "c.json", {**common, "seed": 1, "accuracy": 0.6, "per_task_accuracy": [0.6] * 4})
    with pytest.raises(UserError, match="not on the same tasks \\(seed 0 vs 1\\)"):
        main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")])


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)


@pytest.mark.parametrize("file, content, message", [
    ("maml-pem/results/test_5w1s.json", '{"ways": 5, "shots": 1, "accuracy": 0.9, "tasks": 1, "steps": 1}',
     "'ci95' must be a finite number, got nothing"),
    ("maml-pem/results/test_5w1s.json", "[1, 2]", "expected a JSON object, got list"),
    ("maml-pem/results/test_5w5s.json", '{"ways": 5, "shots": 5, "accuracy": "90%", "ci95": 0.1, "tasks": 1, '
     '"steps": 1}', "'accuracy' must be a finite number, got '90%'"),
    ("maml-pem/results/test_5w5s.json", '{"ways": 5, "shots": 5, "accuracy": 0.9, "ci95": 0.1, "tasks": 1, '
     '"steps": 1, "seconds": Infinity}', "'seconds' must be a finite number, got inf"),
    ("maml-pem/config.json", "[]", "expected a JSON object, got list"),
    ("caches/encode.json", '{"pseudo_label_quality": {"ari": "x"}}', "'ari' must be a finite number, got 'x'"),
    ("caches/encode.json", '{"pseudo_label_quality": [0.5]}', "expected a JSON object, got list"),
    ("caches/encode.json", '"done"', "expected a JSON object, got str"),
    ("cfe/metrics.jsonl", b"\xff\xfe{}\n", "not JSON lines"),
    ("cfe/metrics.jsonl", '[1]\n', "expected a JSON object, got list"),
    ("maml-pem/metrics.jsonl", '{"epoch": 1, "seconds": "60"}\n', "'seconds' must be a finite number"),
])
def test_malformed_run_files_are_one_line_naming_the_file(tmp_path, capsys, file, content, message):
    make_pipeline(tmp_path)
    _write(tmp_path / file, content)
    with pytest.raises(SystemExit) as e:
        cli_main(main, [str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {tmp_path / file}: ") and message in err, err
    assert not (tmp_path / "summary.json").exists()


def test_task_mismatch_is_the_one_pairing_rule():
    from fewshot.report import task_mismatch
    a = {"split": "val", "ways": 5, "shots": 1, "queries": 5, "tasks": 2, "seed": 0, "tasks_sha256": "ab",
         "per_task_accuracy": [0.4, 0.6]}
    assert task_mismatch(a, dict(a)) == ""
    assert task_mismatch(a, {**a, "tasks_sha256": "cd"}) == "tasks_sha256 ab vs cd"
    assert task_mismatch(a, {**a, "per_task_accuracy": [0.5]}) == "number of per-task accuracies"
    assert task_mismatch(a, {**a, "per_task_accuracy": None}) == "no per-task accuracies of sampled tasks"


def test_ep_runs_and_semi_supervised_results_get_rows_of_their_own(tmp_path):
    make_pipeline(tmp_path)
    save_json(tmp_path / "ep" / "config.json", {"learner": "ep", "pretrain_epochs": 10, "finetune_epochs": 5})
    for name, semi in (("test_5w1s.json", {}), ("test_5w1s_5u.json", {"unlabeled": 5}),
                       ("test_5w1s_5u3d.json", {"unlabeled": 5, "distractors": 3})):
        save_json(tmp_path / "ep" / "results" / name, {"ways": 5, "shots": 1, "accuracy": 0.9, "ci95": 0.004,
                                                       "tasks": 1000, **semi})
    rows = [r for r in summarise(tmp_path) if r["run"].endswith("/ep")]
    assert [r["method"] for r in rows] == ["EP", "EP, 5 unlabelled per way",
                                          "EP, 5 unlabelled per way + 3 distractor classes"]
    assert all(r["epochs"] == "10+5" for r in rows)
    assert "| ep | EP | test | 10+5 | 90.00 ± 0.40 % (1000 tasks) |" in to_markdown(rows)


def test_protonet_runs_and_the_embedding_baseline_get_rows_of_their_own(tmp_path):
    make_pipeline(tmp_path)
    common = {"ways": 5, "shots": 1, "ci95": 0.1, "tasks": 4, "seed": 0, "tasks_sha256": "ab12"}
    save_json(tmp_path / "pixels" / "config.json", {"method": "raw pixels, nearest prototype (no training)"})
    save_json(tmp_path / "pixels" / "results" / "test_5w1s.json", {**common, "steps": 0, "accuracy": 0.5,
              "per_task_accuracy": [0.4, 0.6, 0.4, 0.6]})
    save_json(tmp_path / "embedding" / "config.json",
              {"method": "CFE embedding, nearest prototype (no meta-learning)", "checkpoint": "/r/cfe/last.pt"})
    save_json(tmp_path / "embedding" / "results" / "test_5w1s.json", {**common, "steps": 0, "accuracy": 0.6,
              "checkpoint": "/r/cfe/last.pt", "per_task_accuracy": [0.6, 0.6, 0.6, 0.6]})
    for name, supervised, acc in (("protonet", False, 0.7), ("protonet-true", True, 0.9)):
        save_json(tmp_path / name / "config.json", {"learner": "protonet", "epochs": 30, "supervised": supervised})
        JsonlLog(tmp_path / name / "metrics.jsonl").write(epoch=1, seconds=300)
        for file, semi in (("test_5w1s.json", {}), ("test_5w1s_5u.json", {"unlabeled": 5})):
            save_json(tmp_path / name / "results" / file, {**common, **semi, "accuracy": acc, "seconds": 60,
                      "per_task_accuracy": [acc] * 4, "learner": "protonet"})
    rows = summarise(tmp_path)
    by_run = {(r["run"].rsplit("/", 1)[1], r["semi"]): r for r in rows}
    assert by_run["protonet", (0, 0)]["method"] == "ProtoNets"
    assert by_run["protonet", (5, 0)]["method"] == "ProtoNets, 5 unlabelled per way"
    assert by_run["protonet-true", (0, 0)]["method"] == "ProtoNets, true labels (supervised)"
    pn = by_run["protonet", (0, 0)]
    assert pn["epochs"] == 30 and pn["ari"] == 0.5 and pn["seconds"] == {"cfe": 120, "encode": 30, "train": 300,
                                                                         "test": 60}
    emb = by_run["embedding", (0, 0)]
    assert emb["method"] == "CFE embedding, nearest prototype (no meta-learning)"
    assert emb["epochs"] is None and emb["ari"] is None and emb["seconds"]["train"] is None
    table = to_markdown(rows)
    assert "| protonet | ProtoNets | test | 30 | 70.00 ± 10.00 % (4 tasks) | - | 0.500 | 0.900 |" in table
    assert "| protonet-true | ProtoNets, true labels (supervised) | test | 30 | 90.00 ± 10.00 % (4 tasks) |" in table
    assert "| embedding | CFE embedding, nearest prototype (no meta-learning) | test | - | 60.00 ± 10.00 % " \
           "(4 tasks) | - | - | - |" in table
    # each paired with the pixel baseline on the same tasks
    assert "- protonet - pixels, test 5-way 1-shot: +20.00 ± 11.32 points" in table
    assert "- embedding - pixels, test 5-way 1-shot: +10.00 ± 11.32 points" in table
    # a run's semi-supervised row says which it is, as its row in the table does
    assert "- protonet (5 unlabelled per way) - pixels, test 5-way 1-shot: +20.00 ± 11.32 points" in table


# A folder of pipeline folders (scripts/omniglot_table.sh): one comparison table of task construction x meta-learner.
def _result(folder, split, ways, shots, acc, name=None, **extra):
    save_json(folder / "results" / (name or f"{split}_{ways}w{shots}s.json"),
              {"ways": ways, "shots": shots, "accuracy": acc, "ci95": 0.01, "tasks": 1000, "steps": 10, "seed": 0,
               "tasks_sha256": f"{split}{ways}{shots}", **extra})


def _pipeline(root, name, encode, runs, ari=0.5):
    save_json(root / name / "caches" / "encode.json",
              {"dataset": "omniglot", "labels": "kmeans", "supervised": False, "embedding_loss": "cfe",
               "partitions": 1, "knn_smooth": 0, "pseudo_label_quality": {"ari": ari, "nmi": 0.9}, **encode})
    for run, cfg, results in runs:
        save_json(root / name / run / "config.json", {"epochs": 20, "ways": 5, **cfg})
        for split, ways, shots, acc in results:
            _result(root / name / run, split, ways, shots, acc)


FIVE_WAY = [("test", 5, 1, 0.80), ("test", 5, 5, 0.90)]


def make_table(root, dataset="omniglot"):
    _pipeline(root, "cfe", {}, [
        ("maml-pem", {"pem": True}, [*FIVE_WAY, ("val", 5, 1, 0.70)]),
        ("maml-nopem", {"pem": False}, FIVE_WAY),
        ("ep", {"learner": "ep"}, FIVE_WAY),
        ("protonet", {"learner": "protonet"}, FIVE_WAY),
        ("maml-pem-20way", {"pem": True, "ways": 20}, [("test", 20, 1, 0.60), ("test", 20, 5, 0.75)]),
        ("maml-true", {"pem": False, "supervised": True}, FIVE_WAY)])
    # semi-supervised tasks: in the pipeline's own table only
    _result(root / "cfe" / "ep", "test", 5, 1, 0.5, "test_5w1s_5u.json", unlabeled=5)
    _pipeline(root, "moco", {"embedding_loss": "moco"}, [("maml-pem", {"pem": True}, FIVE_WAY)])
    _pipeline(root, "partitions", {"partitions": 10}, [("maml-pem", {"pem": True}, FIVE_WAY)])
    _pipeline(root, "kmeans-pixels", {"labels": "pixels", "embedding_loss": None},
              [("maml-pem", {"pem": True}, FIVE_WAY)])
    _pipeline(root, "random", {"labels": "random", "embedding_loss": None}, [("maml-pem", {"pem": True}, FIVE_WAY)])
    _pipeline(root, "oracle", {"labels": "oracle", "supervised": True, "embedding_loss": None},
              [("maml", {"pem": False, "supervised": True}, FIVE_WAY)], ari=1.0)
    for folder, method in ((root / "pixels", "raw pixels, nearest prototype (no training)"),
                           (root / "cfe" / "pixels", "raw pixels, nearest prototype (no training)"),  # the same again
                           (root / "embedding", "CFE embedding, nearest prototype (no meta-learning)")):
        save_json(folder / "config.json", {"method": method, "cache": f"data/{dataset}/{dataset}_cache_test.npz"})
        for ways, shots in ((5, 1), (5, 5), (20, 1), (20, 5)):
            _result(folder, "test", ways, shots, 0.4 if "pixels" in method else 0.5, steps=0)
    if dataset != "omniglot":
        for encode in root.glob("*/caches/encode.json"):
            save_json(encode, {**load_json(encode), "dataset": dataset})


def test_a_folder_of_pipelines_gives_one_comparison_table(tmp_path, capsys):
    make_table(tmp_path)
    main([str(tmp_path)])
    table = (tmp_path / "summary.md").read_text()
    assert capsys.readouterr().out == table
    test = table[table.index("## test split"):table.index("## published results (cited, not run here)")]
    assert "| task construction | meta-learner | 5-way 1-shot | 5-way 5-shot | 20-way 1-shot | 20-way 5-shot | ARI " \
           "| NMI | runs |" in test
    # the 20-way meta-training run gives the 20-way columns of the CFE + MAML + PEM row
    assert "| CFE k-means | MAML + PEM | 80.00 ± 1.00 % | 90.00 ± 1.00 % | 60.00 ± 1.00 % | 75.00 ± 1.00 % | 0.500 " \
           "| 0.900 | cfe/maml-pem, cfe/maml-pem-20way (20-way meta-training) |" in test
    rows = [line.split(" | ")[:2] for line in test.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == [["| CFE k-means", "MAML + PEM"], ["| CFE k-means", "MAML (PEM off)"], ["| CFE k-means", "EP"],
                    ["| CFE k-means", "ProtoNets"], ["| CFE, 10 k-means partitions (CACTUs-style)", "MAML + PEM"],
                    ["| MoCo k-means", "MAML + PEM"], ["| k-means on pixels", "MAML + PEM"],
                    ["| random labels", "MAML + PEM"],
                    ["| -", "CFE embedding, nearest prototype (no meta-learning)"],
                    ["| -", "raw pixels, nearest prototype (no training)"],  # once, though found twice
                    ["| true labels (oracle, supervised)", "MAML (PEM off)"],
                    ["| true labels (supervised)", "MAML (PEM off)"]]
    assert "| true labels (oracle, supervised) | MAML (PEM off) | 80.00 ± 1.00 % | 90.00 ± 1.00 % | - | - | 1.000 " \
           "| 0.900 | oracle/maml |" in test
    # a --supervised run on pseudo-labelled caches never read them: no pseudo-label quality
    assert "| true labels (supervised) | MAML (PEM off) | 80.00 ± 1.00 % | 90.00 ± 1.00 % | - | - | - | - " \
           "| cfe/maml-true |" in test
    assert "| - | raw pixels, nearest prototype (no training) | 40.00 ± 1.00 % | 40.00 ± 1.00 % | 40.00 ± 1.00 % " \
           "| 40.00 ± 1.00 % | - | - | pixels, cfe/pixels |" in test
    assert "cited" not in test and "68.84" not in test
    # val is a table of its own, with the columns its results have
    val = table[table.index("## val split"):table.index("## test split")]
    assert "| task construction | meta-learner | 5-way 1-shot | ARI | NMI | runs |" in val
    assert "| CFE k-means | MAML + PEM | 70.00 ± 1.00 % | 0.500 | 0.900 | cfe/maml-pem |" in val
    # the literature's rows: under the measured tables, marked, never among them
    cited = table[table.index("## published results (cited, not run here)"):]
    assert "| omniglot | CACTUs-MAML (cited, not run here) | 68.84 % | 87.78 % | Hsu et al. 2019 |" in cited
    assert "| omniglot | UMTRA (cited, not run here) | 83.80 % | 95.43 % | Khodadadeh et al. 2019 |" in cited
    assert "| omniglot | MAML, true labels (supervised) (cited, not run here) | 94.46 % | 98.83 % | Hsu et al. 2019 |" \
        in cited
    doc = load_json(tmp_path / "summary.json")
    rows = {(r["construction"], r["learner"]): r for r in doc["splits"]["test"]["rows"]}
    assert doc["splits"]["test"]["columns"] == ["5w1s", "5w5s", "20w1s", "20w5s"]
    assert [k for k, r in rows.items() if r["supervised"]] == [("true labels (oracle, supervised)", "MAML (PEM off)"),
                                                               ("true labels (supervised)", "MAML (PEM off)")]
    assert rows["CFE k-means", "MAML + PEM"]["cells"]["20w5s"]["run"] == \
        "cfe/maml-pem-20way (20-way meta-training)"
    assert all(c["cited"] for c in doc["cited"]) and len(doc["cited"]) == 3


def test_other_datasets_get_no_cited_rows_and_one_pipeline_keeps_its_own_table(tmp_path):
    make_table(tmp_path, dataset="cifar10")
    main([str(tmp_path)])
    assert "cited" not in (tmp_path / "summary.md").read_text()
    main([str(tmp_path / "cfe")])  # one pipeline folder: fewshot.report's own table, as before
    assert isinstance(load_json(tmp_path / "cfe" / "summary.json"), list)
    assert "| maml-pem | MAML + PEM | test | 20 | 80.00 ± 1.00 % (1000 tasks, 10 steps) |" in \
        (tmp_path / "cfe" / "summary.md").read_text()


def test_pipelines_smoothed_or_of_several_draws_say_so_and_same_named_rows_of_two_pipelines_stay_apart(tmp_path):
    from fewshot.table import comparison
    from fewshot.table import to_markdown as to_table_markdown
    _pipeline(tmp_path, "seed0", {"knn_smooth": 5}, [("maml-pem", {"pem": True}, FIVE_WAY)])
    _pipeline(tmp_path, "seed1", {"knn_smooth": 5}, [("maml-pem", {"pem": True}, [("test", 5, 1, 0.7)])])
    _pipeline(tmp_path, "random", {"labels": "random", "partitions": 3}, [("maml-pem", {"pem": True}, FIVE_WAY)])
    doc = comparison(tmp_path)
    assert [(r["construction"], r["runs"]) for r in doc["splits"]["test"]["rows"]] == [
        ("CFE k-means, embeddings smoothed over 5 neighbours", ["seed0/maml-pem"]),
        ("CFE k-means, embeddings smoothed over 5 neighbours", ["seed1/maml-pem"]),
        ("random labels, 3 draws", ["random/maml-pem"])]
    assert "MAML adapts 10 steps at test" in to_table_markdown(doc)
    _result(tmp_path / "seed1" / "maml-pem", "test", 5, 1, 0.7, steps=50)  # tests of other budgets: each cell says
    table = to_table_markdown(comparison(tmp_path))
    assert "| 70.00 ± 1.00 % (50 steps) | - |" in table and "| 80.00 ± 1.00 % (10 steps) |" in table
    assert "MAML adapts" not in table


def test_a_folder_of_pipelines_without_results_is_an_error(tmp_path):
    _pipeline(tmp_path, "cfe", {}, [])
    with pytest.raises(UserError, match="no pipeline folder .* with learner or baseline results"):
        main([str(tmp_path)])
    save_json(tmp_path / "cfe" / "caches" / "encode.json", {"labels": "kmeans", "partitions": "ten"})
    _result(tmp_path / "cfe" / "maml-pem", "test", 5, 1, 0.8)
    save_json(tmp_path / "cfe" / "maml-pem" / "config.json", {"pem": True})
    with pytest.raises(UserError, match="encode.json: 'partitions' must be a finite number"):
        main([str(tmp_path)])
