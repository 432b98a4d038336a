#!/usr/bin/env bash
# Val-split decision of the pseudo-label options at the quick budget (paper settings, 50 CFE epochs, 20 MAML epochs).
# bash valrun.sh SEED   (run at commit 9ed42a2; two seeds side by side, one thread each)
set -euo pipefail
cd "$(dirname "$0")"
PY=/work/main/.venv/bin/python
s=$1; R=runs/val-s$s; T=1
[ -f data/omniglot/prepare.json ] || $PY -m fewshot.datasets omniglot --source ../shared/data/omniglot/omniglot.tar.xz --out data/omniglot
$PY -m cfe.train --data data/omniglot/omniglot_cache_train.npz --out $R/cfe --epochs 50 --queue-size 16384 \
  --bn-splits 4 --per-split-loss --crop torchvision --seed $s --threads $T --resume
for cfg in "plain 0 1" "p10knn5 5 10"; do
  set -- $cfg
  C=$R/caches-$1/omniglot_64_K_500
  [ -f $R/caches-$1/encode.json ] || $PY -m cfe.encode --checkpoint $R/cfe/checkpoints/epoch_0050.pt --data-dir data/omniglot \
    --dataset omniglot --out $R/caches-$1 --k 500 --knn-smooth $2 --partitions $3 --seed $s --threads $T --resume
  $PY -m maml.train --train-cache ${C}_train.npz --val-cache ${C}_val.npz --out $R/maml-$1 --epochs 20 \
    --save-every 1 --seed $s --threads $T --resume
done
