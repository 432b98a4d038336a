# PRESET=paper-plus SEED=3, every stage from scratch, a snapshot kept every MAML epoch; then the epoch a 20-epoch run
# selects tested at 1 shot with --seed 0, the tasks of the PRESET=paper SEED=3 record (results/omniglot-paper-seed3),
# for a paired comparison, and the epoch a 30-epoch run selects (maml.test --checkpoint best@30); run from the
# repository root
set -e
export OMNIGLOT_SOURCE=../shared/data/omniglot/omniglot.tar.xz RUN_DIR=runs/omniglot-paper-plus-seed3
PRESET=paper-plus SEED=3 MAML_SAVE_EVERY=1 bash scripts/omniglot.sh
.venv/bin/python -m maml.test --run $RUN_DIR/maml-pem --checkpoint best@20 --shots 1 --seed 0
for k in 1 5; do
  .venv/bin/python -m maml.test --run $RUN_DIR/maml-pem --checkpoint best@30 --shots $k --seed 3
done
