#!/usr/bin/env bash
# Does the current code repeat a recorded run bit for bit? Retrains the first epochs of the PRESET=paper SEED=4
# run (its CFE, and MAML + PEM on its caches with a snapshot every epoch) from the same settings, and compares
# the weights with the recorded snapshots of the same epochs. Needs runs/omniglot-paper-seed4 (CFE checkpoints,
# caches and maml-pem-curve, as RESULTS.md made them) and a machine with the same CPU kernels: torch picks AVX2 or
# AVX-512 code at run time, and the two round differently.
# Run from the repository root.
set -euo pipefail
PY=.venv/bin/python
REF=${REF:-runs/omniglot-paper-seed4}
OUT=${OUT:-runs/repro-seed4}
CFE_EPOCHS=${CFE_EPOCHS:-20}    # a multiple of 20: CFE keeps a snapshot every 20 epochs
MAML_EPOCHS=${MAML_EPOCHS:-7}   # past the 5 warm-up epochs, so PEM rebuilds meta-batches too

# the arguments of $REF/cfe/config.json; --epochs 200 keeps the cosine schedule of the 200-epoch run
$PY -m cfe.train --data data/omniglot/omniglot_cache_train.npz --out "$OUT/cfe" --epochs 200 --queue-size 16384 \
  --bn-splits 4 --per-split-loss --crop torchvision --seed 4 --halt-after "$CFE_EPOCHS"
C=$REF/caches/omniglot_64_K_500
$PY -m maml.train --train-cache "${C}_train.npz" --val-cache "${C}_val.npz" --out "$OUT/maml-pem" --epochs 60 \
  --save-every 1 --seed 4 --halt-after "$MAML_EPOCHS"

E=$(printf %04d "$CFE_EPOCHS") M=$(printf %04d "$MAML_EPOCHS")
$PY results/omniglot-repro/compare.py cfe "$OUT/cfe/checkpoints/epoch_$E.pt" "$REF/cfe/checkpoints/epoch_$E.pt"
$PY results/omniglot-repro/compare.py maml "$OUT/maml-pem/checkpoints/epoch_$M.pt" \
  "$REF/maml-pem-curve/checkpoints/epoch_$M.pt"
