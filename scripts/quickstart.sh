#!/usr/bin/env bash
# The whole PL-CFE pipeline on scikit-learn's bundled handwritten digits (no download), in a few minutes on a
# laptop CPU: CFE on the unlabelled digits 0-4 -> k-means pseudo-labels -> MAML + PEM -> 5-way tests on the
# digits 5-9, beside a raw-pixel nearest-prototype baseline on the same tasks. Creates the environment first if
# needed. The budgets are small; scripts/omniglot.sh makes real runs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-runs/quickstart}
DATA_DIR=${DATA_DIR:-data/digits}
SEED=${SEED:-0}
HIDDEN=${HIDDEN:-32}        # conv channels (64 in the paper's Omniglot runs)
CFE_EPOCHS=${CFE_EPOCHS:-60}
CLUSTERS=${CLUSTERS:-30}
MAML_EPOCHS=${MAML_EPOCHS:-8}
TEST_STEPS=${TEST_STEPS:-10}
TEST_TASKS=${TEST_TASKS:-1000}

source scripts/env.sh
start=$(date +%s)
[ -f "$DATA_DIR/prepare.json" ] || "$PYTHON" -m fewshot.datasets digits --out "$DATA_DIR"
# 900 training images: smaller batches and queue than Omniglot's, BatchNorm over the whole batch
"$PYTHON" -m cfe.train --data "$DATA_DIR/digits_cache_train.npz" --out "$RUN_DIR/cfe" --epochs "$CFE_EPOCHS" \
  --batch-size 128 --queue-size 1024 --bn-splits 1 --hidden "$HIDDEN" --save-every "$CFE_EPOCHS" --seed "$SEED" --resume
"$PYTHON" -m cfe.encode --checkpoint "$RUN_DIR/cfe/checkpoints/last.pt" --data-dir "$DATA_DIR" --dataset digits \
  --out "$RUN_DIR/caches" --clusters "$CLUSTERS" --seed "$SEED" --resume
"$PYTHON" -m maml.train --caches "$RUN_DIR/caches" --out "$RUN_DIR/maml-pem" --epochs "$MAML_EPOCHS" \
  --batches-per-epoch 50 --pem-warmup 2 --hidden "$HIDDEN" --seed "$SEED" --resume
for shots in 1 5; do
  [ "$RUN_DIR/maml-pem/results/test_5w${shots}s.json" -nt "$RUN_DIR/maml-pem/checkpoints/best.pt" ] || \
    "$PYTHON" -m maml.test --run "$RUN_DIR/maml-pem" --shots "$shots" --steps "$TEST_STEPS" --tasks "$TEST_TASKS"
done
"$PYTHON" -m fewshot.baseline --cache "$DATA_DIR/digits_cache_test.npz" --out "$RUN_DIR/pixels" --tasks "$TEST_TASKS"
echo
echo "Digits 0-4 (unlabelled) -> 5-way tests on digits 5-9, $TEST_TASKS tasks, $TEST_STEPS adaptation steps:"
"$PYTHON" -m fewshot.report "$RUN_DIR"
echo "total wall time: $(( $(date +%s) - start )) s"
