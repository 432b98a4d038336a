# The PRESET=paper seed-0 embedding made on the fourth VM (runs/omniglot-paper-vm4, made by RESULTS.md's command for
# results/omniglot-paper-vm4), each embedding averaged with its 5 nearest neighbours before k-means (--knn-smooth 5),
# MAML + PEM 20 epochs, 1-shot test; run from the repository root
set -e
R=runs/exp/vm4-knn5 C=runs/exp/vm4-knn5/caches/omniglot_64_K_500
.venv/bin/python -m cfe.encode --checkpoint runs/omniglot-paper-vm4/cfe/checkpoints/epoch_0200.pt \
  --data-dir data/omniglot --dataset omniglot --out $R/caches --k 500 --knn-smooth 5 --seed 0 --resume
.venv/bin/python -m maml.train --train-cache ${C}_train.npz --val-cache ${C}_val.npz --out $R/maml-pem \
  --epochs 20 --seed 0 --resume
.venv/bin/python -m maml.test --run $R/maml-pem --shots 1 --seed 0
