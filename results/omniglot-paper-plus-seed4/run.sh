# PRESET=paper-plus SEED=4, every stage from scratch, a snapshot kept every MAML epoch; then the epoch a 20-epoch run
# selects tested at 1 shot with --seed 0, the tasks of the PRESET=paper SEED=4 record (results/omniglot-paper-seed4),
# for a paired comparison, and the epoch a 30-epoch run selects (maml.test --checkpoint best@30); run from the
# repository root
set -e
export OMNIGLOT_SOURCE=../shared/data/omniglot/omniglot.tar.xz RUN_DIR=runs/omniglot-paper-plus-seed4
PRESET=paper-plus SEED=4 MAML_SAVE_EVERY=1 bash scripts/omniglot.sh
.venv/bin/python -m maml.test --run $RUN_DIR/maml-pem --checkpoint best@20 --shots 1 --seed 0
for k in 1 5; do
  .venv/bin/python -m maml.test --run $RUN_DIR/maml-pem --checkpoint best@30 --shots $k --seed 4
done
# added after the lines above had run: the 40-epoch model (best.pt) on the tasks of --seed 0, to pair with the
# epoch a 40-epoch PRESET=paper SEED=4 run selects (results/omniglot-paper-seed4, test_5w1s_epoch_0034.json)
.venv/bin/python -m maml.test --run $RUN_DIR/maml-pem --shots 1 --seed 0 --output $RUN_DIR/maml-pem/results/test_5w1s_seed0.json
