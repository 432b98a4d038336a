#!/usr/bin/env bash
# The quick preset's configuration (plain k-means) on the test split, once: 1,000 test tasks of seed 0, 10 steps.
# bash testplain.sh SEED   (at commit 9ed42a2, as valrun.sh)
set -euo pipefail
cd "$(dirname "$0")"
PY=/work/main/.venv/bin/python
s=$1; R=runs/val-s$s
for shots in 1 5; do
  [ -f $R/maml-plain/results/test_5w${shots}s.json ] || $PY -m maml.test --run $R/maml-plain --shots $shots \
    --steps 10 --seed 0 --tasks 1000 --threads 1
done
