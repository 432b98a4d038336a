# Half of the tasks with a random cluster and its 4 nearest clusters as ways, on the PRESET=paper seed-0 caches made on the
# fourth VM (runs/omniglot-paper-vm4), MAML + PEM 20 epochs, 1-shot test; run from the repository root
set -e
C=runs/omniglot-paper-vm4/caches/omniglot_64_K_500 R=runs/exp/vm4-hard/maml-pem-hard05
.venv/bin/python results/omniglot-paper-vm4-hard/hard.py 0.5 -- --train-cache ${C}_train.npz --val-cache ${C}_val.npz --out $R \
  --epochs 20 --seed 0 --resume
.venv/bin/python -m maml.test --run $R --shots 1 --seed 0
