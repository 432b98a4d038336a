"""bench/maml_step.py: ours against a clone-and-update MAML (learn2learn / higher's approach), timed, measured and
checked to compute the same meta-gradients."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fewshot.errors import cli_main
from maml.maml import MAMLNet, meta_loss

BENCH = Path(__file__).resolve().parents[2] / "bench" / "maml_step.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("maml_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_is_timed_measured_and_both_orders_checked():
    """One row per (method, shots, order) asked for, with a rate, a ratio to ours (1 for ours) and a memory from its
    own subprocess; the float64 gradient check covers second and first order whatever --order times."""
    r = subprocess.run([sys.executable, str(BENCH), "--threads", "1", "--iterations", "2", "--meta-batch", "2",
                        "--shots", "1", "--order", "second"], capture_output=True, text=True, cwd=BENCH.parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    rows = out["rows"]
    assert [(row["method"], row["shots"], row["order"]) for row in rows] == \
        [("ours", 1, "second"), ("clone-update", 1, "second")]
    assert rows[0]["ratio_to_ours"] == 1.0
    for row in rows:
        assert row["iterations_per_s"] > 0 and row["peak_memory_mib"] > 0 and row["ratio_to_ours"] > 0
    assert [(c["shots"], c["order"]) for c in out["gradient_check"]] == [(1, "second"), (1, "first")]
    for check in out["gradient_check"]:
        assert check["equal"] and check["max_abs_diff"] <= 1e-9 * check["max_abs_grad"]
    assert (out["queries"], out["meta_batch"], out["steps"], out["inner_lr"], out["threads"]) == (5, 2, 1, 0.1, 1)
    assert "ru_maxrss" in out["memory_method"] and out["device"] == "cpu"


@pytest.mark.parametrize("first_order", [False, True])
def test_clone_and_update_gives_our_meta_gradients(first_order):
    """Directly, on a tiny float64 case of 2 inner steps: the same losses and .grad of every parameter as
    maml.maml.meta_loss; the originals stay leaves that the clone's slots depend on."""
    bench = load_bench()
    gen = torch.Generator().manual_seed(0)
    tasks = [(torch.rand(6, 1, 16, 16, generator=gen, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2]),
              torch.rand(6, 1, 16, 16, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]))
             for _ in range(2)]
    grads, losses = [], []
    for loss_fn in (meta_loss, bench.clone_update_loss):
        torch.manual_seed(0)
        model = MAMLNet(hidden=8, image_size=16, n_way=3).double()
        loss, _ = loss_fn(model, tasks, 2, 0.1, first_order)
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad for p in model.parameters()])
        assert all(p.is_leaf for p in model.parameters())
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(theirs, ours, rtol=1e-9, atol=1e-12)

    clone = bench.clone_module(model)
    assert all(not p.is_leaf for p in clone.parameters()) and len(list(clone.parameters())) == len(grads[0])
    bench.update_module(clone, [torch.ones_like(p) for p in clone.parameters()])
    for p, q in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(q, p + 1)


def test_the_check_tells_the_orders_apart():
    """The check is not vacuous: on the bench's own tasks, first-order meta-gradients differ from second-order."""
    bench = load_bench()
    tasks = bench.make_tasks(1, 1, 2, torch.device("cpu"), torch.float64)
    second, first = (bench.meta_gradients("clone-update", tasks, 1, 0.1, o, "cpu") for o in (False, True))
    assert max((a - b).abs().max().item() for a, b in zip(second, first)) > 1e-6


@pytest.mark.parametrize("args, message", [
    (["--shots", "0"], "argument --shots: invalid positive_int value: '0'"),
    (["--order", "third"], "argument --order: invalid choice: 'third'"),
])
def test_bad_settings_give_one_error_line_and_exit_2(args, message, capsys):
    """Through the script's own entry point (cli_main), in this process: argparse's usage, one error line, exit 2."""
    with pytest.raises(SystemExit) as e:
        cli_main(load_bench().main, args)
    err = capsys.readouterr()
    assert e.value.code == 2 and err.out == ""
    lines = err.err.strip().splitlines()
    assert lines[0].startswith("usage:") and message in lines[-1] and "Traceback" not in err.err
    assert sum("error:" in line for line in lines) == 1
