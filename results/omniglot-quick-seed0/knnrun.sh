#!/usr/bin/env bash
# Neighbour count of the smoothing on val: 10 partitions of 10-neighbour-smoothed embeddings, as p10run.sh with 5
# bash knnrun.sh SEED   (in the folder of valrun.sh's runs/, at commit 9ed42a2)
set -euo pipefail
cd "$(dirname "$0")"
PY=/work/main/.venv/bin/python
s=$1; R=runs/val-s$s; C=$R/caches-p10knn10/omniglot_64_K_500
[ -f $R/caches-p10knn10/encode.json ] || $PY -m cfe.encode --checkpoint $R/cfe/checkpoints/epoch_0050.pt \
  --data-dir data/omniglot --dataset omniglot --out $R/caches-p10knn10 --k 500 --knn-smooth 10 --partitions 10 \
  --seed $s --threads 1 --resume
$PY -m maml.train --train-cache ${C}_train.npz --val-cache ${C}_val.npz --out $R/maml-p10knn10 --epochs 10 \
  --save-every 1 --seed $s --threads 1 --resume
for shots in 1 5; do
  out=$R/maml-p10knn10/results/val_5w${shots}s_best@10.json
  [ -f $out ] || $PY -m maml.test --run $R/maml-p10knn10 --checkpoint best@10 \
    --cache $R/caches-p10knn10/omniglot_64_K_500_val.npz --shots $shots --steps 10 --seed 0 --tasks 1000 --threads 1 \
    --output $out
done
