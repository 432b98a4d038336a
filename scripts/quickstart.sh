#!/usr/bin/env bash
# The whole PL-CFE pipeline on scikit-learn's bundled handwritten digits (no download), in a few minutes on a
# laptop CPU: CFE on the unlabelled digits 0-4 -> k-means pseudo-labels -> MAML+PEM -> 5-way test on digits 5-9.
# Creates the environment first if needed. Budgets are small; see scripts/omniglot.sh for a real run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-runs/quickstart}
DATA_DIR=${DATA_DIR:-data/digits}
SEED=${SEED:-0}
HIDDEN=${HIDDEN:-32}           # conv channels (64 in the paper's Omniglot runs)
CFE_EPOCHS=${CFE_EPOCHS:-30}
K=${K:-30}
MAML_EPOCHS=${MAML_EPOCHS:-4}
TEST_TASKS=${TEST_TASKS:-1000}
TEST_STEPS=${TEST_STEPS:-10}

source scripts/env.sh
start=$(date +%s)
[ -f "$DATA_DIR/prepare.json" ] || "$PYTHON" -m fewshot.datasets digits --out "$DATA_DIR"
[ -f "$RUN_DIR/cfe/checkpoints/epoch_$(printf %04d "$CFE_EPOCHS").pt" ] || "$PYTHON" -m cfe.train \
  --data "$DATA_DIR/digits_cache_train.npz" --out "$RUN_DIR/cfe" --epochs "$CFE_EPOCHS" --batch-size 128 \
  --queue-size 1024 --hidden "$HIDDEN" --save-every "$CFE_EPOCHS" --seed "$SEED" --resume
[ "$RUN_DIR/caches/encode.json" -nt "$RUN_DIR/cfe/checkpoints/last.pt" ] || "$PYTHON" -m cfe.encode --dataset digits --data-dir "$DATA_DIR" \
  --checkpoint "$RUN_DIR/cfe/checkpoints/last.pt" --out "$RUN_DIR/caches" --k "$K" --seed "$SEED" --resume
"$PYTHON" -m maml.train --train-cache "$RUN_DIR/caches/digits_64_K_${K}_train.npz" --out "$RUN_DIR/maml-pem" \
  --epochs "$MAML_EPOCHS" --batches-per-epoch 50 --pem-warmup 2 --hidden "$HIDDEN" --seed "$SEED" --resume
for shots in 1 5; do
  [ "$RUN_DIR/maml-pem/results/test_5w${shots}s.json" -nt "$RUN_DIR/maml-pem/checkpoints/best.pt" ] || "$PYTHON" -m maml.test --run "$RUN_DIR/maml-pem" \
    --cache "$RUN_DIR/caches/digits_64_K_${K}_test.npz" --shots "$shots" --tasks "$TEST_TASKS" \
    --steps "$TEST_STEPS" --seed "$SEED"
done
echo
echo "Digits 0-4 (unlabelled) -> 5-way tests on digits 5-9, $TEST_TASKS tasks, $TEST_STEPS adaptation steps:"
"$PYTHON" -m fewshot.report "$RUN_DIR"
echo "total wall time: $(( $(date +%s) - start )) s"
