# PRESET=paper-plus SEED=5 on the CFE run of PRESET=paper SEED=5 (runs/omniglot-paper-seed5/cfe copied in before
# the first line: the two presets train the same CFE, so the script skips that stage), a snapshot kept every MAML
# epoch; then the epochs a 20- and a 40-epoch run select tested at 1 shot with --seed 0, the tasks of the
# PRESET=paper SEED=5 record (results/omniglot-paper-seed5), for paired comparisons, and the epoch a 30-epoch run
# selects (maml.test --checkpoint best@30); run from the repository root
set -e
export OMNIGLOT_SOURCE=../shared/data/omniglot/omniglot.tar.xz RUN_DIR=runs/omniglot-paper-plus-seed5
PRESET=paper-plus SEED=5 MAML_SAVE_EVERY=1 bash scripts/omniglot.sh
.venv/bin/python -m maml.test --run $RUN_DIR/maml-pem --checkpoint best@20 --shots 1 --seed 0
.venv/bin/python -m maml.test --run $RUN_DIR/maml-pem --shots 1 --seed 0 --output $RUN_DIR/maml-pem/results/test_5w1s_seed0.json
for k in 1 5; do
  .venv/bin/python -m maml.test --run $RUN_DIR/maml-pem --checkpoint best@30 --shots $k --seed 5
done
