# PRESET=paper SEED=2 with KNN_SMOOTH=5 PARTITIONS=10 and 40 MAML epochs, every stage from scratch, a snapshot kept
# every MAML epoch; then the epoch a 30-epoch run selects (maml.test --checkpoint best@30), and the epoch a 20-epoch
# run selects tested at 1 shot with --seed 0, the tasks of the PRESET=paper SEED=2 record (results/omniglot-paper-seed2),
# for a paired comparison; run from the repository root
set -e
export OMNIGLOT_SOURCE=../shared/data/omniglot/omniglot.tar.xz RUN_DIR=runs/omniglot-paper-p10knn5-seed2
PRESET=paper SEED=2 KNN_SMOOTH=5 PARTITIONS=10 MAML_EPOCHS=40 MAML_SAVE_EVERY=1 bash scripts/omniglot.sh
for k in 1 5; do
  .venv/bin/python -m maml.test --run $RUN_DIR/maml-pem --checkpoint best@30 --shots $k --seed 2
done
.venv/bin/python -m maml.test --run $RUN_DIR/maml-pem --checkpoint best@20 --shots 1 --seed 0
