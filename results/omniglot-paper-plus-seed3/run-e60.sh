# PRESET=paper-plus with 60 MAML epochs on CFE seeds 3, 0, 1 and 2 (seeds 4 and 5: ../omniglot-paper-plus-seed5/
# run-e60.sh): each seed's 40-epoch run copied to maml-pem-e60 and continued to 60 epochs (a constant-rate run of N
# epochs ends with the model that the first N epochs of a longer run of the same seed reach); then the 60-epoch
# selection at 1 and 5 shots with --seed 0, the tasks of the paper preset's 60-epoch tests; run from the repository
# root. Seeds 0-2 ran as PRESET=paper KNN_SMOOTH=5 PARTITIONS=10 MAML_EPOCHS=40, the settings PRESET=paper-plus names.
set -e
export OMNIGLOT_SOURCE=../shared/data/omniglot/omniglot.tar.xz
for s in 3 0 1 2; do
  case $s in 0) export RUN_DIR=runs/omniglot-paper-p10knn5 ;; 1|2) export RUN_DIR=runs/omniglot-paper-p10knn5-seed$s ;;
    *) export RUN_DIR=runs/omniglot-paper-plus-seed$s ;; esac
  D=$RUN_DIR/maml-pem-e60
  if [ ! -d $D ]; then
    mkdir -p $D && cp -a $RUN_DIR/maml-pem/checkpoints $RUN_DIR/maml-pem/metrics.jsonl $RUN_DIR/maml-pem/invocations.jsonl $D/
    sed 's#"out": "[^"]*"#"out": "'$D'"#' $RUN_DIR/maml-pem/config.json > $D/config.json
  fi
  PRESET=paper-plus SEED=$s MAML_EPOCHS=60 MAML_SAVE_EVERY=1 MAML_DIR=$D TEST_SHOTS= bash scripts/omniglot.sh
  .venv/bin/python -m maml.test --run $D --shots 1 --seed 0
  .venv/bin/python -m maml.test --run $D --shots 5 --seed 0
done
