"""scripts/omniglot_table.sh: every row of the Omniglot comparison table, one pipeline folder per task construction,
run through the recording stub interpreter of tests/test_scripts.py."""

import os
from pathlib import Path

import pytest

from tests.test_scripts import option, run_script, stages


def run_table(tmp_path, **env):
    return run_script(tmp_path, script="omniglot_table.sh", TABLE_DIR=str(tmp_path / "table"), **env)


def by_out(calls, module, key="--out"):
    """{folder under the table (from `key`): args} of the calls to `module`, which must not repeat a folder but
    for the CFE run and caches that chain.sh resumes once per row."""
    return {option(a, key).split("/table/", 1)[1]: a for m, a in calls if m == module}


def test_omniglot_table_runs_every_row(tmp_path):
    rc, err, calls = run_table(tmp_path)
    assert rc == 0, err
    table = f"{tmp_path}/table"
    cfe = by_out(calls, "cfe.train")  # one CFE run for the CFE rows, one MoCo run
    assert set(cfe) == {"cfe/cfe", "moco/cfe"}
    assert option(cfe["moco/cfe"], "--loss") == "moco" and "--loss" not in cfe["cfe/cfe"]
    assert option(cfe["cfe/cfe"], "--epochs") == "50"  # the quick budget
    encode = by_out(calls, "cfe.encode")
    assert set(encode) == {"cfe/caches", "moco/caches", "partitions/caches", "kmeans-pixels/caches", "random/caches",
                           "oracle/caches"}
    for pipeline in ("cfe", "partitions"):  # the CACTUs-style row encodes the same CFE run again
        assert option(encode[f"{pipeline}/caches"], "--checkpoint") == f"{table}/cfe/cfe/checkpoints/last.pt"
    assert option(encode["partitions/caches"], "--partitions") == "10"
    assert option(encode["moco/caches"], "--checkpoint") == f"{table}/moco/cfe/checkpoints/last.pt"
    for pipeline, labels in (("kmeans-pixels", "pixels"), ("random", "random"), ("oracle", "oracle")):
        assert option(encode[f"{pipeline}/caches"], "--labels") == labels
        assert "--checkpoint" not in encode[f"{pipeline}/caches"]
    assert "--supervised" in encode["oracle/caches"] and "--clusters" not in encode["oracle/caches"]
    assert option(encode["random/caches"], "--clusters") == "500"
    maml = by_out(calls, "maml.train")
    assert set(maml) == {"cfe/maml-pem", "cfe/maml-nopem", "cfe/maml-pem-20way", "moco/maml-pem",
                         "partitions/maml-pem", "kmeans-pixels/maml-pem", "random/maml-pem", "oracle/maml"}
    for run, args in maml.items():
        assert option(args, "--caches") == f"{table}/{run.split('/')[0]}/caches" and "--resume" in args
        assert ("--no-pem" in args) == (run in ("cfe/maml-nopem", "oracle/maml"))
        assert ("--supervised" in args) == (run == "oracle/maml")
        assert option(args, "--ways") == ("20" if run == "cfe/maml-pem-20way" else None)
    assert option(by_out(calls, "ep.train")["cfe/ep"], "--caches") == f"{table}/cfe/caches"
    assert option(by_out(calls, "protonet.train")["cfe/protonet"], "--caches") == f"{table}/cfe/caches"
    tests = {(m, option(a, "--run").split("/table/")[1], option(a, "--ways"), option(a, "--shots"))
             for m, a in calls if m.endswith(".test")}
    assert len(tests) == len([m for m, _ in calls if m.endswith(".test")])  # each test once
    assert tests == {(f"{learner}.test", run, ways, shots) for learner, run, ways in (
        ("maml", "cfe/maml-pem", "5"), ("maml", "cfe/maml-nopem", "5"), ("ep", "cfe/ep", "5"),
        ("protonet", "cfe/protonet", "5"), ("maml", "cfe/maml-pem-20way", "20"), ("maml", "moco/maml-pem", "5"),
        ("maml", "partitions/maml-pem", "5"), ("maml", "kmeans-pixels/maml-pem", "5"),
        ("maml", "random/maml-pem", "5"), ("maml", "oracle/maml", "5")) for shots in ("1", "5")}
    for m, a in calls:
        if m.endswith(".test"):
            assert option(a, "--split") == "test" and option(a, "--tasks") == "1000"
            assert option(a, "--steps") == ("10" if m == "maml.test" else None)
    baselines = [(option(a, "--out").split("/table/")[1], option(a, "--ways"), option(a, "--checkpoint"))
                 for m, a in calls if m == "fewshot.baseline"]
    ckpt = f"{table}/cfe/cfe/checkpoints/last.pt"
    assert baselines == [("embedding", "5", ckpt), ("embedding", "20", ckpt), ("pixels", "5", None),
                         ("pixels", "20", None)]
    assert calls[-1] == ("fewshot.report", [table])


def test_omniglot_table_skips_finished_tests_on_a_second_run(tmp_path):
    from fewshot.report import result_name
    rc, err, calls = run_table(tmp_path)
    assert rc == 0, err
    table = tmp_path / "table"
    made = []  # every test's results, made after the model it tested
    for m, a in calls:
        if m.endswith(".test") or m == "fewshot.baseline":
            after = a[a.index("--shots") + 1:]
            for shots in after[:next(i for i, x in enumerate(after) if x.startswith("--"))]:  # one or several
                made.append(Path(option(a, "--run") or option(a, "--out")) / "results"
                            / result_name("test", int(option(a, "--ways")), int(shots)))
    for run in {p.parents[1] for p in made}:
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / "best.pt").touch()
        os.utime(run / "checkpoints" / "best.pt", (1000, 1000))
    for path in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (2000, 2000))
    (table / "cfe" / "cfe" / "checkpoints").mkdir(parents=True)
    (table / "cfe" / "cfe" / "checkpoints" / "last.pt").touch()
    os.utime(table / "cfe" / "cfe" / "checkpoints" / "last.pt", (1000, 1000))
    rc, err, calls = run_table(tmp_path)
    assert rc == 0, err
    assert not [m for m, _ in calls if m.endswith(".test") or m == "fewshot.baseline"]
    assert "maml.train" in stages(calls) and stages(calls)[-1] == "fewshot.report"  # the stages resume by themselves
    os.utime(table / "random" / "maml-pem" / "checkpoints" / "best.pt", (3000, 3000))  # trained further
    os.utime(table / "cfe" / "cfe" / "checkpoints" / "last.pt", (3000, 3000))  # CFE too: its embedding baseline
    rc, err, calls = run_table(tmp_path)
    assert sorted((m, option(a, "--run") or option(a, "--out"), option(a, "--ways"), option(a, "--shots"))
                  for m, a in calls if m.endswith(".test") or m == "fewshot.baseline") == [
        ("fewshot.baseline", f"{table}/embedding", "20", "1"), ("fewshot.baseline", f"{table}/embedding", "5", "1"),
        ("maml.test", f"{table}/random/maml-pem", "5", "1"), ("maml.test", f"{table}/random/maml-pem", "5", "5")]
    rc, err, calls = run_table(tmp_path, SPLIT="val", WIDE_WAYS="")  # val results are other files; no 20-way row
    tests = [(m, a) for m, a in calls if m.endswith(".test") or m == "fewshot.baseline"]
    assert len(tests) == 9 * 2 + 2 and all(option(a, "--split") == "val" for _, a in tests)
    assert "20" not in {option(a, "--ways") for _, a in tests} and "cfe/maml-pem-20way" not in str(calls)


@pytest.mark.parametrize("env, message", [({"SPLIT": "train"}, "SPLIT must be test or val"),
                                          ({"WIDE_WAYS": "5"}, "WIDE_WAYS must be empty or a number of ways"),
                                          ({"PARTITIONS": "1"}, "PARTITIONS must be an integer of at least 2"),
                                          ({"PRESET": "fast"}, "PRESET must be one of")])
def test_omniglot_table_bad_variables_run_nothing(tmp_path, env, message):
    rc, err, calls = run_table(tmp_path, **env)
    assert rc == 2 and calls == [] and message in err and len(err.strip().splitlines()) == 1


def test_omniglot_table_stops_at_a_failed_stage(tmp_path):
    rc, err, calls = run_table(tmp_path, STUB_FAIL="protonet.train")
    assert rc != 0 and stages(calls)[-1] == "protonet.train"
