#!/usr/bin/env bash
# The k-means options on the val-decision CFE runs: 10 partitions of 5-neighbour-smoothed embeddings, MAML + PEM
# for 10 epochs (the budget this session left), compared with the plain caches' run at best@10 on val.
# bash p10run.sh SEED   (at commit 9ed42a2, as valrun.sh)
set -euo pipefail
cd "$(dirname "$0")"
PY=/work/main/.venv/bin/python
s=$1; R=runs/val-s$s; C=$R/caches-p10knn5/omniglot_64_K_500
[ -f $R/caches-p10knn5/encode.json ] || $PY -m cfe.encode --checkpoint $R/cfe/checkpoints/epoch_0050.pt \
  --data-dir data/omniglot --dataset omniglot --out $R/caches-p10knn5 --k 500 --knn-smooth 5 --partitions 10 \
  --seed $s --threads 1 --resume
$PY -m maml.train --train-cache ${C}_train.npz --val-cache ${C}_val.npz --out $R/maml-p10knn5 --epochs 10 \
  --save-every 1 --seed $s --threads 1 --resume
for cfg in plain p10knn5; do
  for shots in 1 5; do
    out=$R/maml-$cfg/results/val_5w${shots}s_best@10.json
    [ -f $out ] || $PY -m maml.test --run $R/maml-$cfg --checkpoint best@10 \
      --cache $R/caches-$cfg/omniglot_64_K_500_val.npz --shots $shots --steps 10 --seed 0 --tasks 1000 --threads 1 \
      --output $out
  done
done
