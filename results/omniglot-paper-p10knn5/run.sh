# PRESET=paper SEED=0 with KNN_SMOOTH=5 PARTITIONS=10 and 40 MAML epochs, every stage from scratch, then a 30-epoch
# run continued from the 40-epoch run's epoch-20 snapshot (a constant-rate run of N epochs ends with the model
# that the first N epochs of a longer run of the same seed reach); run from the repository root
set -e
export OMNIGLOT_SOURCE=../shared/data/omniglot/omniglot.tar.xz RUN_DIR=runs/omniglot-paper-p10knn5
PRESET=paper SEED=0 KNN_SMOOTH=5 PARTITIONS=10 MAML_EPOCHS=40 bash scripts/omniglot.sh
D=$RUN_DIR/maml-pem-e30 && mkdir -p $D/checkpoints && cp $RUN_DIR/maml-pem/checkpoints/epoch_0020.pt $D/checkpoints/last.pt
head -20 $RUN_DIR/maml-pem/metrics.jsonl > $D/metrics.jsonl && head -1 $RUN_DIR/maml-pem/invocations.jsonl > $D/invocations.jsonl
sed 's#"out": "[^"]*"#"out": "'$D'"#' $RUN_DIR/maml-pem/config.json > $D/config.json
PRESET=paper SEED=0 KNN_SMOOTH=5 PARTITIONS=10 MAML_EPOCHS=30 MAML_DIR=$D bash scripts/omniglot.sh
