# P = 10 k-means partitions (seeds 0-9) of the PRESET=paper seed-0 embedding made on the fourth VM (runs/omniglot-paper-vm4),
# each task drawn from one partition; MAML + PEM 20 epochs, 1-shot test; run from the repository root
set -e
C=runs/omniglot-paper-vm4/caches/omniglot_64_K_500 R=runs/exp/vm4-parts/maml-pem-p10
.venv/bin/python results/omniglot-paper-vm4-partitions/parts.py 10 ${C}_train_emb.npz data/omniglot/omniglot_cache_train.npz -- \
  --train-cache ${C}_train.npz --val-cache ${C}_val.npz --out $R --epochs 20 --seed 0 --resume
.venv/bin/python -m maml.test --run $R --shots 1 --seed 0
