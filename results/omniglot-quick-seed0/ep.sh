#!/usr/bin/env bash
# EP on the quick preset's seed-0 pseudo-labels (the caches of valrun.sh: CFE 50 epochs, K = 500, made at 9ed42a2),
# and on the true train labels (the supervised reference), at the quick preset's EP budget (10 + 5 epochs),
# upstream's settings otherwise; each run's checkpoint chosen on val. Then 5-way 1/5-shot tests (maml.test's
# tasks), plain and with 5 unlabelled images per way. Run from the repository at the commit it records.
# bash ep.sh pseudo|supervised
set -euo pipefail
E=/work/exp; C=$E/runs/val-s0/caches-plain/omniglot_64_K_500; D=$E/data/omniglot/omniglot_cache
case $1 in
  pseudo) train=(--train-cache ${C}_train.npz --val-cache ${C}_val.npz --test-cache ${C}_test.npz); out=$E/runs/ep/ep ;;
  supervised) train=(--supervised --train-cache ${D}_train.npz --val-cache ${D}_val.npz --test-cache ${D}_test.npz)
              out=$E/runs/ep/ep-supervised ;;
esac
.venv/bin/python -m ep.train "${train[@]}" --out $out --pretrain-epochs 10 --finetune-epochs 5 --seed 0 \
  --threads 1 --resume
for shots in 1 5; do
  for u in 0 5; do
    .venv/bin/python -m ep.test --run $out --shots $shots --unlabeled $u --threads 1
  done
done
