#!/usr/bin/env bash
# The whole PL-CFE pipeline in a few minutes on a laptop CPU, with no download: CFE on the unlabelled train
# glyphs (made-up characters drawn by fewshot/glyphs.py, 150 classes) -> k-means pseudo-labels -> MAML + PEM ->
# 5-way 1- and 5-shot tests on 50 unseen classes, beside a raw-pixel nearest-prototype baseline on the same tasks.
# Creates the environment first if needed. SPLIT=val tests on the 50 val classes instead, which is where this
# script's settings were chosen. scripts/omniglot.sh makes real runs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-runs/quickstart}
DATA_DIR=${DATA_DIR:-data/glyphs}
SPLIT=${SPLIT:-test}
SEED=${SEED:-0}
HIDDEN=${HIDDEN:-32}        # conv channels (64 in the paper's Omniglot runs)
CFE_EPOCHS=${CFE_EPOCHS:-60}
CLUSTERS=${CLUSTERS:-100}
MAML_EPOCHS=${MAML_EPOCHS:-8}
TEST_STEPS=${TEST_STEPS:-10}
TEST_TASKS=${TEST_TASKS:-1000}

source scripts/env.sh
start=$(date +%s)
[ -f "$DATA_DIR/prepare.json" ] || "$PYTHON" -m fewshot.datasets glyphs --out "$DATA_DIR"
# 3,000 training images: a queue shorter than the train set, as the paper's
"$PYTHON" -m cfe.train --data "$DATA_DIR/glyphs_cache_train.npz" --out "$RUN_DIR/cfe" --epochs "$CFE_EPOCHS" \
  --queue-size 2048 --hidden "$HIDDEN" --save-every "$CFE_EPOCHS" --seed "$SEED" --resume
"$PYTHON" -m cfe.encode --checkpoint "$RUN_DIR/cfe/checkpoints/last.pt" --data-dir "$DATA_DIR" --dataset glyphs \
  --out "$RUN_DIR/caches" --clusters "$CLUSTERS" --seed "$SEED" --resume
"$PYTHON" -m maml.train --caches "$RUN_DIR/caches" --out "$RUN_DIR/maml-pem" --epochs "$MAML_EPOCHS" \
  --batches-per-epoch 50 --pem-warmup 2 --hidden "$HIDDEN" --seed "$SEED" --resume
for shots in 1 5; do
  [ "$RUN_DIR/maml-pem/results/${SPLIT}_5w${shots}s.json" -nt "$RUN_DIR/maml-pem/checkpoints/best.pt" ] || \
    "$PYTHON" -m maml.test --run "$RUN_DIR/maml-pem" --split "$SPLIT" --shots "$shots" --steps "$TEST_STEPS" \
      --tasks "$TEST_TASKS"
done
"$PYTHON" -m fewshot.baseline --cache "$DATA_DIR/glyphs_cache_$SPLIT.npz" --split "$SPLIT" --out "$RUN_DIR/pixels" \
  --tasks "$TEST_TASKS"
echo
echo "Glyphs: CFE + MAML on 150 unlabelled classes -> 5-way tasks on 50 unseen $SPLIT classes, $TEST_TASKS tasks:"
"$PYTHON" -m fewshot.report "$RUN_DIR"
echo "total wall time: $(( $(date +%s) - start )) s"
