# PRESET=paper SEED=1 with KNN_SMOOTH=5 PARTITIONS=10 and 40 MAML epochs, every stage from scratch, a snapshot kept
# every MAML epoch; then the epoch a 30-epoch run selects, tested from those snapshots (maml.test --checkpoint
# best@30: a constant-rate run of N epochs ends with the model the first N epochs of a longer run of the same seed
# reach); run from the repository root
set -e
export OMNIGLOT_SOURCE=../shared/data/omniglot/omniglot.tar.xz RUN_DIR=runs/omniglot-paper-p10knn5-seed1
PRESET=paper SEED=1 KNN_SMOOTH=5 PARTITIONS=10 MAML_EPOCHS=40 MAML_SAVE_EVERY=1 bash scripts/omniglot.sh
for k in 1 5; do
  .venv/bin/python -m maml.test --run $RUN_DIR/maml-pem --checkpoint best@30 --shots $k --seed 1
done
