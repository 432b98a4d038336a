# PRESET=paper-plus with 60 MAML epochs on CFE seeds 5 and 4: each seed's 40-epoch run (snapshots every epoch) copied
# to maml-pem-e60 and continued to 60 epochs (a constant-rate run of N epochs ends with the model that the first N
# epochs of a longer run of the same seed reach); then the 60-epoch selection at 1 and 5 shots with --seed 0, the
# tasks of the paper preset's 60-epoch tests of the seed (and of maml-pem/results/test_5w1s_seed0.json); run from the
# repository root
set -e
export OMNIGLOT_SOURCE=../shared/data/omniglot/omniglot.tar.xz
for s in 5 4; do
  export RUN_DIR=runs/omniglot-paper-plus-seed$s
  D=$RUN_DIR/maml-pem-e60
  if [ ! -d $D ]; then
    mkdir -p $D && cp -a $RUN_DIR/maml-pem/checkpoints $RUN_DIR/maml-pem/metrics.jsonl $RUN_DIR/maml-pem/invocations.jsonl $D/
    sed 's#"out": "[^"]*"#"out": "'$D'"#' $RUN_DIR/maml-pem/config.json > $D/config.json
  fi
  PRESET=paper-plus SEED=$s MAML_EPOCHS=60 MAML_SAVE_EVERY=1 MAML_DIR=$D TEST_SHOTS= bash scripts/omniglot.sh
  .venv/bin/python -m maml.test --run $D --shots 1 --seed 0
  .venv/bin/python -m maml.test --run $D --shots 5 --seed 0
done
