# The same with the embedding of results/omniglot-paper-vm4-knn5 (each averaged with its 5 nearest neighbours),
# after its run.sh made runs/exp/vm4-knn5/caches; run from the repository root
set -e
C=runs/exp/vm4-knn5/caches/omniglot_64_K_500 R=runs/exp/vm4-parts/maml-pem-p10-knn5
.venv/bin/python results/omniglot-paper-vm4-partitions/parts.py 10 ${C}_train_emb.npz data/omniglot/omniglot_cache_train.npz -- \
  --train-cache ${C}_train.npz --val-cache ${C}_val.npz --out $R --epochs 20 --seed 0 --resume
.venv/bin/python -m maml.test --run $R --shots 1 --seed 0
.venv/bin/python -m maml.test --run $R --shots 5 --seed 0  # run afterwards on its own, 2026-12-05 04:34-04:46 UTC
