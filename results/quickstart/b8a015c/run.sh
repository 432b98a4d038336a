#!/usr/bin/env bash
# The quickstart after commit 667f98e (CFE's split-BatchNorm encoders run one group at a time: the same computation,
# other float rounding), every stage clocked; made at commit b8a015c on 2026-12-07 (21:58-22:06 UTC), 2 threads,
# another run paused meanwhile. The summary and results here; stages.jsonl from bench/clock_python.sh (its
# interpreter path shortened to .venv/bin/python).
set -euo pipefail
STAGE_CLOCK=/tmp/qs2/stages.jsonl CLOCKED_PYTHON=$PWD/.venv/bin/python PYTHON=$PWD/bench/clock_python.sh \
  RUN_DIR=/tmp/qs2/run DATA_DIR=/tmp/qs2/data bash scripts/quickstart.sh
.venv/bin/python bench/stages.py /tmp/qs2/stages.jsonl
