"""The wall time and peak memory of each stage of a pipeline run, as a markdown table, from the JSON lines that
bench/clock_python.sh appends (one per command the scripts ran):

    STAGE_CLOCK=$PWD/stages.jsonl PYTHON=$PWD/bench/clock_python.sh bash scripts/omniglot.sh
    python bench/stages.py stages.jsonl

A stage is named by its module (`python -m cfe.train ...`; under torchrun, the module torchrun runs) and, for the
meta-tests and baselines, by its shots. A stage that ran several times (a resumed run) shows each run; `exit` is
the command's exit status.
"""

import argparse
import re
from pathlib import Path

from fewshot.cli import HelpFormatter
from fewshot.errors import UserError, cli_main

# the fields before argv are numbers; argv is the raw command line (GNU time's %C does not escape quotes)
LINE = re.compile(r'^\{"seconds": ([\d.]+), "max_rss_kib": (\d+), "exit": (-?\d+), "argv": "(.*)"\}$')


def stage_name(argv: str) -> str:
    words = argv.split()
    modules = [w for prev, w in zip(words, words[1:]) if prev == "-m" and w != "torch.distributed.run"]
    name = modules[0] if modules else " ".join(words[1:3])
    shots = re.search(r"--shots ((?:\d+ ?)+)", argv)
    return f"{name} ({shots.group(1).strip()}-shot)" if shots and name.endswith((".test", ".baseline")) else name


def read_clock(path) -> list:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("Command exited"):  # GNU time adds this line before a failure's
            continue
        m = LINE.match(line)
        if not m:
            raise UserError(f"{path}: line {n} is not a bench/clock_python.sh record")
        seconds, rss, status, argv = m.groups()
        rows.append(dict(stage=stage_name(argv), seconds=float(seconds), max_rss_mib=int(rss) / 1024,
                         exit=int(status)))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python bench/stages.py", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("clock", help="the JSON-lines file of bench/clock_python.sh (its STAGE_CLOCK)")
    args = p.parse_args(argv)
    if not Path(args.clock).is_file():
        raise UserError(f"{args.clock}: no such file")
    rows = read_clock(args.clock)
    print("| stage | minutes | peak memory (MiB) | exit |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds'] / 60:.1f} | {r['max_rss_mib']:.0f} | {r['exit']} |")
    total = sum(r["seconds"] for r in rows)
    print(f"| **all** | **{total / 60:.1f}** | {max((r['max_rss_mib'] for r in rows), default=0):.0f} | |")


if __name__ == "__main__":
    cli_main(main)
