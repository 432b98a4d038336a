# The train cache of the PRESET=paper seed-0 caches made on the fourth VM (runs/omniglot-paper-vm4) cut down to the
# half of each k-means cluster nearest its centre, MAML + PEM 20 epochs, 1-shot test; run from the repository root
set -e
.venv/bin/python results/omniglot-paper-vm4-core50/core.py runs/omniglot-paper-vm4/caches runs/exp/vm4-core/caches50 0.5
C=runs/exp/vm4-core/caches50/omniglot_64_K_500 R=runs/exp/vm4-core/maml-pem-core50
.venv/bin/python -m maml.train --train-cache ${C}_train.npz --val-cache ${C}_val.npz --out $R --epochs 20 --seed 0 --resume
.venv/bin/python -m maml.test --run $R --shots 1 --seed 0
