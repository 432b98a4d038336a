#!/usr/bin/env bash
# Issue 45's last row and issue 46's supervised CIFAR-10 reference, run from the worktree /work/exp/wt, one stage
# at a time with 2 threads (the machine to itself): the paper preset's CFE (seed 0) and caches, EP on them (the
# quick EP budget), MAML + PEM (paper preset) on the same caches, then supervised MAML on CIFAR-10.
set -euo pipefail
cd /work/exp/wt
PY=/work/exp/clock_python.sh
export PYTHON=$PY CLOCKED_PYTHON=/work/main/.venv/bin/python STAGE_CLOCK=/work/exp/logs/paper-stages.jsonl
while [ -n "${WAIT_PID:-}" ] && kill -0 "$WAIT_PID" 2>/dev/null; do sleep 20; done
export OMNIGLOT_SOURCE=/work/shared/data/omniglot/omniglot.tar.xz DATA_DIR=/work/exp/data/omniglot \
  RUN_DIR=/work/exp/runs/paper-s0 PRESET=paper SEED=0 THREADS=2
R=$RUN_DIR
METALEARNER=ep EP_PRETRAIN_EPOCHS=10 EP_FINETUNE_EPOCHS=5 bash scripts/omniglot.sh
[ -f $R/ep/results/test_5w1s_5u.json ] || $PY -m ep.test --run $R/ep --split test --shots 1 --unlabeled 5 --tasks 1000 --threads 2
bash scripts/omniglot.sh
C=/work/exp/data/cifar10; S=/work/exp/runs/cifar10/quick/maml-supervised
$PY -m maml.train --supervised --no-pem --train-cache $C/cifar10_cache_train.npz --test-cache $C/cifar10_cache_test.npz \
  --out $S --epochs 20 --seed 0 --threads 1 --resume
for s in 1 5; do [ -f $S/results/test_5w${s}s.json ] || $PY -m maml.test --run $S --split test --shots $s --steps 10 --tasks 1000 --threads 2; done
# then, at the same commit (d21521f), with one thread beside the next job:
# $PY -m ep.test --run $R/ep --split test --shots 5 --unlabeled 5 --tasks 1000 --threads 1
# and summary.md rewritten by `python -m fewshot.report $R` at the commit that adds this record
