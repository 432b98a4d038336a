#!/usr/bin/env bash
# CIFAR-10 at the quick budget with 30 CFE epochs (to fit about 2 hours on 2 CPU cores), every other setting the
# stages' defaults; made from a checkout of commit 7c506b0 on 2026-12-07 (started with THREADS=1 beside another
# run, resumed with THREADS=2 at CFE epoch 17). CIFAR-10 has no val split here (5 train / 5 test classes), so no
# setting was chosen on it. Then the clustering scores of the CFE embedding on all ten classes (commit a6a9f9c).
set -euo pipefail
CIFAR10_SOURCE=../shared/data/cifar10/cifar10-jpeg.tar.gz DATA_DIR=data/cifar10 RUN_DIR=runs/cifar10-quick \
  CFE_EPOCHS=30 THREADS=2 bash scripts/cifar10.sh
.venv/bin/python -m cfe.quality --checkpoint runs/cifar10-quick/cfe/checkpoints/last.pt --data-dir data/cifar10 \
  --dataset cifar10 --splits train test --out runs/cifar10-quick/quality_all10.json --threads 1
# The supervised MAML reference (the true train labels, the MAML + PEM row's settings with PEM off): its folder made
# at commit 7c506b0 (stopped before an epoch ended), all of it run at 2200429 on 2026-12-07 with nothing else
# running: maml.train 19.5 min, the tests 1.6 and 5.8 min.
C=data/cifar10; S=runs/cifar10-quick/maml-supervised
.venv/bin/python -m maml.train --supervised --no-pem --train-cache $C/cifar10_cache_train.npz \
  --test-cache $C/cifar10_cache_test.npz --out $S --epochs 20 --seed 0 --threads 2 --resume
for s in 1 5; do .venv/bin/python -m maml.test --run $S --split test --shots $s --steps 10 --tasks 1000 --threads 2; done
