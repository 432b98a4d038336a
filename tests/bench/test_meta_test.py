"""bench/meta_test.py and bench/pem.py: small runs give their reports; vmap over tasks adapts as the loop does."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fewshot.errors import UserError
from maml.maml import MAMLNet, evaluate_task

ROOT = Path(__file__).resolve().parents[2]


def load(script):
    spec = importlib.util.spec_from_file_location(f"bench_{script}", ROOT / "bench" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(script, capsys, *args) -> dict:
    load(script).main(["--threads", "1", *args])
    return json.loads(capsys.readouterr().out)


def test_vmap_over_tasks_adapts_each_task_as_the_loop_float64():
    torch.manual_seed(0)
    model = MAMLNet(hidden=8).double()
    xs, xq = torch.rand(3, 10, 1, 28, 28, dtype=torch.float64), torch.rand(3, 15, 1, 28, 28, dtype=torch.float64)
    ys = torch.arange(5).repeat(2).expand(3, -1)
    together = load("meta_test").evaluate_vmap(model, xs, ys, xq, steps=3, lr=0.1)
    alone = torch.stack([evaluate_task(model, xs[t], ys[t], xq[t], ys[t][:1].expand(15), 3, 0.1)[1] for t in range(3)])
    assert together.shape == (3, 15, 5)
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-10)


def test_meta_test_bench_reports_each_method_against_the_floor(capsys):
    out = report("meta_test", capsys, "--shots", "1", "--steps", "2", "--tasks", "2", "--vmap", "2",
                 "--peak-size", "256")
    loop, vm = out["rows"]
    assert (loop["method"], vm["method"]) == ("loop", "vmap-2") and loop["ratio_to_loop"] == 1.0
    assert vm["predictions_agree_with_loop"] > 0.95 and loop["gflop_per_task"] == vm["gflop_per_task"] > 0
    floor = loop["gflop_per_task"] / out["matmul_gflops_per_s"]
    assert loop["floor_ratio"] == pytest.approx(loop["seconds_per_task"] / floor, rel=0.02)


def test_pem_bench_reports_the_expected_overhead(capsys):
    out = report("pem", capsys, "--images", "2000", "--clusters", "50", "--iterations", "1", "--meta-batch", "2")
    assert out["rebuild_seconds_median"] > 0 and out["iteration_seconds_median"] > 0
    assert out["overhead_at_eta"] == pytest.approx(0.1 * out["rebuild_ratio"], abs=0.002)


@pytest.mark.parametrize("args, message", [
    (["--images", "2000", "--clusters", "500"], "--clusters 500: at most 100 for 2000 images"),
    (["--caches", "nowhere"], "nowhere/encode.json"),
    (["--images", "2000", "--clusters", "5"], "5 clusters: PEM needs more than 5"),
])
def test_pem_bench_bad_input(args, message):
    with pytest.raises(UserError, match=message):
        load("pem").main(args)
