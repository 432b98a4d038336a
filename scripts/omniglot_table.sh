#!/usr/bin/env bash
# The Omniglot comparison table at the quick budget: every task-construction x meta-learner row, one pipeline
# folder per task construction under TABLE_DIR, then `fewshot.report TABLE_DIR` tables them all (summary.md).
#
#   OMNIGLOT_SOURCE=/path/to/omniglot.tar.xz bash scripts/omniglot_table.sh
#   OMNIGLOT_SOURCE=/path/to/omniglot.tar.xz SPLIT=val bash scripts/omniglot_table.sh   # compare settings on val
#
# Rows (folders under TABLE_DIR):
#   cfe/maml-pem             CFE k-means + MAML + PEM (PL-CFE)       scripts/lib/chain.sh: data, CFE, encode, MAML
#   cfe/maml-nopem           CFE k-means + MAML (PEM off)            chain.sh, PEM=0 (the same CFE run and caches)
#   cfe/ep                   CFE k-means + EP                        chain.sh, METALEARNER=ep
#   cfe/maml-pem-20way       the WIDE_WAYS-way (20-way) columns: MAML + PEM meta-trained and tested WIDE_WAYS-way
#   cfe/protonet             CFE k-means + ProtoNets                 protonet.train on cfe/caches
#   moco/maml-pem            MoCo k-means + MAML + PEM               chain.sh, cfe.train --loss moco
#   partitions/maml-pem      CFE, PARTITIONS k-means partitions (CACTUs-style) + MAML + PEM: cfe/'s CFE run again
#   kmeans-pixels/maml-pem   k-means on the raw pixels + MAML + PEM  cfe.encode --labels pixels
#   random/maml-pem          random labels + MAML + PEM              cfe.encode --labels random
#   oracle/maml              true labels + MAML (supervised: the ceiling)  cfe.encode --labels oracle --supervised
#   embedding                the frozen CFE embedding (cfe/cfe), nearest prototype, no meta-learning
#   pixels                   the raw pixels, nearest prototype, no training
# Each is tested on the same SPLIT tasks (5-way; WIDE_WAYS-way for maml-pem-20way and the baselines), TEST_SHOTS
# shots. Stages fail loudly: a failed stage stops the script, and rerunning it continues from there.
#
# Rerunning the same command resumes: each stage continues or skips itself (--resume), and a test whose result is
# newer than the model it tested (checkpoints/best.pt; for the baselines, the CFE checkpoint or the data) is
# skipped, as in scripts/lib/chain.sh. Another SEED or PRESET needs another TABLE_DIR.
set -euo pipefail
# One { ...; exit; } block: bash reads it whole before running it, so editing this file during a run is safe.
{
OMNIGLOT_SOURCE=${OMNIGLOT_SOURCE:-}  # as scripts/omniglot.sh: omniglot.tar.xz, a folder of its caches or of the
                                      # official zips; unset: the official zips are downloaded
[[ -z $OMNIGLOT_SOURCE || $OMNIGLOT_SOURCE == /* ]] || OMNIGLOT_SOURCE=$PWD/$OMNIGLOT_SOURCE
cd "$(dirname "$0")/.."               # relative folders below are inside the repository
PRESET=${PRESET:-quick}               # scripts/presets/$PRESET.env: the budgets of CFE, MAML, EP and the tests
DATA_DIR=${DATA_DIR:-data/omniglot}   # prepared omniglot_cache_{train,val,test}.npz (made on first use)
TABLE_DIR=${TABLE_DIR:-runs/omniglot-table-$PRESET}  # one pipeline folder per task construction, summary.md
THREADS=${THREADS:-0}                 # CPU threads per stage (0: all)
SEED=${SEED:-0}                       # of CFE, k-means and the meta-learners; the test tasks are seed 0's
SPLIT=${SPLIT:-test}                  # test | val: the split every row is tested on
DEVICE=${DEVICE:-auto}                # auto | cpu | cuda | cuda:1 ...
CLUSTERS=${CLUSTERS:-500}             # k-means clusters of every k-means and random row
PARTITIONS=${PARTITIONS:-10}          # k-means partitions of the CACTUs-style row
WIDE_WAYS=${WIDE_WAYS-20}             # the 20-way columns: ways of their meta-training and tests (empty: none)
TEST_SHOTS=${TEST_SHOTS:-"1 5"}       # shots of every test
TEST_TASKS=${TEST_TASKS:-1000}        # tasks per test
PROTONET_EPOCHS=${PROTONET_EPOCHS:-20}  # ProtoNets epochs of 500 tasks (the presets budget MAML, CFE and EP)
[ -f "scripts/presets/$PRESET.env" ] || { echo "error: PRESET must be one of: $(cd scripts/presets && ls | sed 's/\.env$//' | xargs)" >&2; exit 2; }
source "scripts/presets/$PRESET.env"  # CFE_EPOCHS, MAML_EPOCHS, EP_*_EPOCHS, TEST_STEPS unless set already
case "$SPLIT" in test|val) ;; *) echo "error: SPLIT must be test or val, got '$SPLIT'" >&2; exit 2 ;; esac
[[ $PARTITIONS =~ ^[0-9]+$ && $PARTITIONS -ge 2 ]] || { echo "error: PARTITIONS must be an integer of at least 2, got '$PARTITIONS'" >&2; exit 2; }
[[ -z $WIDE_WAYS || $WIDE_WAYS =~ ^[1-9][0-9]*$ && $WIDE_WAYS != 5 ]] || { echo "error: WIDE_WAYS must be empty or a number of ways other than 5, got '$WIDE_WAYS'" >&2; exit 2; }

source scripts/env.sh
# what chain.sh (run by scripts/omniglot.sh for the rows it makes) reads from the environment, the same for every row
export PYTHON PRESET DATA_DIR SEED DEVICE THREADS CLUSTERS OMNIGLOT_SOURCE CFE_EPOCHS MAML_EPOCHS TEST_STEPS \
  EP_PRETRAIN_EPOCHS EP_FINETUNE_EPOCHS
common=(--seed "$SEED" --device "$DEVICE" --threads "$THREADS")
cfe_checkpoint=$TABLE_DIR/cfe/cfe/checkpoints/last.pt  # the one CFE run of the CFE rows
step() { echo; echo "== $* =="; }

chain() {  # chain PIPELINE LEARNER [VAR=value ...]: scripts/lib/chain.sh's data, CFE, encode and meta-training stages
  local dir=$TABLE_DIR/$1 learner=$2; shift 2  # into TABLE_DIR/PIPELINE (cfe/, caches/) and .../LEARNER; tests below
  env RUN_DIR="$dir" LEARNER_DIR="$dir/$learner" TEST_SHOTS= METALEARNER=maml PEM=1 CFE_ARGS= ENCODE_ARGS= \
    MAML_ARGS= EP_ARGS= "$@" bash scripts/omniglot.sh
}

encode() {  # encode PIPELINE [cfe.encode options]: the pipeline's caches/, labelled as the options say
  local dir=$TABLE_DIR/$1; shift
  step "encode ($*) -> $dir/caches"
  "$PYTHON" -m cfe.encode --data-dir "$DATA_DIR" --dataset omniglot --out "$dir/caches" "${common[@]}" --resume "$@"
}

maml() {  # maml PIPELINE LEARNER [maml.train options]: MAML on the pipeline's caches
  local dir=$TABLE_DIR/$1 learner=$2; shift 2
  step "MAML ($MAML_EPOCHS epochs${*:+, $*}) -> $dir/$learner"
  "$PYTHON" -m maml.train --caches "$dir/caches" --out "$dir/$learner" --epochs "$MAML_EPOCHS" "${common[@]}" \
    --resume "$@"
}

fresh() {  # fresh REF FILE...: every FILE is newer than REF (or REF is missing and every FILE exists)
  local ref=$1 f; shift
  for f; do [ "$f" -nt "$ref" ] || return 1; done
}

meta_test() {  # meta_test RUN LEARNER WAYS: the run's SPLIT tests, each skipped when newer than the model it tested
  local run=$TABLE_DIR/$1 learner=$2 ways=$3 shots steps=()
  if [ "$learner" = maml ]; then steps=(--steps "$TEST_STEPS"); fi
  for shots in $TEST_SHOTS; do
    step "meta-test on $SPLIT, $ways-way $shots-shot ($learner) -> $run/results"
    if fresh "$run/checkpoints/best.pt" "$run/results/${SPLIT}_${ways}w${shots}s.json"; then echo "exists, skipped"
    else "$PYTHON" -m "$learner.test" --run "$run" --split "$SPLIT" --ways "$ways" --shots "$shots" "${steps[@]}" \
      --tasks "$TEST_TASKS" --device "$DEVICE" --threads "$THREADS"; fi
  done
}

baseline() {  # baseline NAME REF [fewshot.baseline options]: 5- and WIDE_WAYS-way, skipped when newer than REF
  local out=$TABLE_DIR/$1 ref=$2 ways shots results; shift 2
  for ways in 5 $WIDE_WAYS; do
    step "nearest-prototype baseline on $SPLIT, $ways-way -> $out"
    results=(); for shots in $TEST_SHOTS; do results+=("$out/results/${SPLIT}_${ways}w${shots}s.json"); done
    if fresh "$ref" "${results[@]}"; then echo "exists, skipped"
    else "$PYTHON" -m fewshot.baseline --cache "$DATA_DIR/omniglot_cache_$SPLIT.npz" --split "$SPLIT" --out "$out" \
      --ways "$ways" --shots $TEST_SHOTS --tasks "$TEST_TASKS" "$@"; fi
  done
}

# CFE k-means: one CFE run (cfe/cfe) and its caches (cfe/caches), four meta-learners
chain cfe maml-pem
meta_test cfe/maml-pem maml 5
chain cfe maml-nopem PEM=0
meta_test cfe/maml-nopem maml 5
chain cfe ep METALEARNER=ep
meta_test cfe/ep ep 5
step "ProtoNets ($PROTONET_EPOCHS epochs) -> $TABLE_DIR/cfe/protonet"
"$PYTHON" -m protonet.train --caches "$TABLE_DIR/cfe/caches" --out "$TABLE_DIR/cfe/protonet" \
  --epochs "$PROTONET_EPOCHS" "${common[@]}" --resume
meta_test cfe/protonet protonet 5
if [ -n "$WIDE_WAYS" ]; then
  chain cfe "maml-pem-${WIDE_WAYS}way" MAML_ARGS="--ways $WIDE_WAYS"
  meta_test "cfe/maml-pem-${WIDE_WAYS}way" maml "$WIDE_WAYS"
fi
# MoCo k-means: the plain contrastive embedding, its own CFE run
chain moco maml-pem CFE_ARGS="--loss moco"
meta_test moco/maml-pem maml 5
# CACTUs-style: PARTITIONS k-means partitions of the same CFE embedding
encode partitions --checkpoint "$cfe_checkpoint" --clusters "$CLUSTERS" --partitions "$PARTITIONS"
maml partitions maml-pem
meta_test partitions/maml-pem maml 5
# no embedding: k-means of the raw pixels, random labels, and the true labels (supervised)
encode kmeans-pixels --labels pixels --clusters "$CLUSTERS"
maml kmeans-pixels maml-pem
meta_test kmeans-pixels/maml-pem maml 5
encode random --labels random --clusters "$CLUSTERS"
maml random maml-pem
meta_test random/maml-pem maml 5
encode oracle --labels oracle --supervised
maml oracle maml --supervised --no-pem
meta_test oracle/maml maml 5
# no meta-learning: nearest prototypes of the frozen CFE embedding and of the raw pixels, on the same tasks
baseline embedding "$cfe_checkpoint" --checkpoint "$cfe_checkpoint" --device "$DEVICE" --threads "$THREADS"
baseline pixels "$DATA_DIR/omniglot_cache_$SPLIT.npz"

step "table ($TABLE_DIR/summary.md)"
"$PYTHON" -m fewshot.report "$TABLE_DIR"
exit
}
