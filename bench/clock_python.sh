#!/usr/bin/env bash
# A stand-in for the scripts' Python that clocks every stage the pipeline runs: wall seconds and peak resident
# memory, one JSON line per command, appended to $STAGE_CLOCK (GNU time's -f; needs /usr/bin/time).
#
#   STAGE_CLOCK=$PWD/stages.jsonl PYTHON=$PWD/bench/clock_python.sh bash scripts/omniglot.sh
#   python bench/stages.py stages.jsonl          # the table
#
# CLOCKED_PYTHON is the interpreter that runs (default: .venv/bin/python of the folder the scripts cd into).
set -euo pipefail
: "${STAGE_CLOCK:?set STAGE_CLOCK to the JSON-lines file to append to}"
exec /usr/bin/time -a -o "$STAGE_CLOCK" -f '{"seconds": %e, "max_rss_kib": %M, "exit": %x, "argv": "%C"}' \
  "${CLOCKED_PYTHON:-.venv/bin/python}" "$@"
