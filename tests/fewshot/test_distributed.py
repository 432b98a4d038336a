"""fewshot.distributed: the collectives under a real 2-process gloo launch (torchrun), and as no-ops in one process;
and cli_main refusing a multi-process launch of a stage that does not scale out."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fewshot import distributed as d
from fewshot.errors import UserError, cli_main

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from fewshot import distributed as d
    from fewshot.errors import cli_main

    def main(argv=None):
        world, device = d.init("cpu")
        grads = [torch.full((2, 3), float(world.rank)), torch.tensor([10.0 * world.rank], dtype=torch.float64)]
        d.all_reduce_mean_(grads)
        gathered = d.all_gather_cat(torch.tensor([[world.rank, world.rank + 1]]))
        row = dict(rank=world.rank, size=world.size, main=world.main, device=str(device),
                   grads=[g.tolist() for g in grads], dtype=str(grads[1].dtype), gathered=gathered.tolist(),
                   chosen=d.broadcast_object(world.rank + 7))
        d.barrier()
        # one file per rank: two processes printing to one pipe can interleave their lines
        with open(f"{sys.argv[1]}/rank{world.rank}.json", "w") as f:
            json.dump(row, f)

    cli_main(main, distributed=True)
""")


def test_collectives_on_two_gloo_processes(tmp_path):
    (tmp_path / "job.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(tmp_path / "job.py"), str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]

    rows = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(x["rank"], x["size"], x["main"], x["device"]) for x in rows] == [(0, 2, True, "cpu"), (1, 2, False, "cpu")]
    for x in rows:
        assert x["grads"] == [[[0.5] * 3] * 2, [5.0]] and x["dtype"] == "torch.float64"
        assert x["gathered"] == [[0, 1], [1, 2]] and x["chosen"] == 7  # rank 0's


def test_one_process_is_world_one_and_collectives_return_their_input(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world, device = d.init("cpu")
    assert world == d.World() and world.main and device.type == "cpu"
    t = torch.arange(3.0)
    assert d.all_gather_cat(t) is t and d.broadcast_object("x") == "x"
    grads = [t.clone()]
    d.all_reduce_mean_(grads)
    assert torch.equal(grads[0], t)


def test_bad_launch_variables(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(UserError, match="RANK='zero': torchrun sets"):
        d.init("cpu")
    with pytest.raises(SystemExit) as e:  # a stage that does not scale out refuses the launch
        cli_main(lambda argv: None)
    assert e.value.code == 2 and "this command runs in one process" in capsys.readouterr().err
