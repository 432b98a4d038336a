# The PL-CFE chain, sourced by the dataset scripts (scripts/omniglot.sh, miniimagenet.sh, ...) once they have set
# DATASET (a fewshot.datasets reader) and SOURCE (its raw data; a path relative to where the command was typed):
# prepare data -> CFE -> encode + k-means -> MAML + PEM (or EP) -> meta-tests, beside a raw-pixel
# nearest-prototype baseline on the same tasks. A dataset script may set any variable below first (its defaults);
# the environment overrides both. Rerunning the same command skips finished stages and resumes an interrupted one.
[[ -z $SOURCE || $SOURCE == /* ]] || SOURCE=$PWD/$SOURCE
cd "$(dirname "${BASH_SOURCE[0]}")/../.."  # relative folders below are inside the repository
PRESET=${PRESET:-quick}               # quick | paper: scripts/presets/$PRESET.env
[ -f "scripts/presets/$PRESET.env" ] || { echo "error: PRESET must be one of: $(cd scripts/presets && ls | sed 's/\.env$//' | xargs)" >&2; exit 2; }
source "scripts/presets/$PRESET.env"  # CFE_EPOCHS, MAML_EPOCHS, EP_*_EPOCHS, TEST_STEPS unless set already
DATA_DIR=${DATA_DIR:-data/$DATASET}   # prepared ${DATASET}_cache_{train,val,test}.npz
RUN_DIR=${RUN_DIR:-runs/$DATASET-$PRESET}
SEED=${SEED:-0}                       # of CFE, k-means and the meta-learner; the test tasks are always seed 0's
DEVICE=${DEVICE:-auto}                # auto | cpu | cuda | cuda:1 ...
THREADS=${THREADS:-0}                 # CPU threads per stage (0: all); THREADS=1 lets two runs share 2 cores
NPROC=${NPROC:-1}                     # processes (GPUs) for cfe.train and maml.train, launched by torchrun;
                                      # several nodes: scripts/slurm/multinode_cfe.sbatch
CLUSTERS=${CLUSTERS:-500}             # k-means clusters (upstream K)
METALEARNER=${METALEARNER:-maml}      # maml | ep (Embedding Propagation), on the same caches
PEM=${PEM:-1}                         # with maml, 1: MAML + PEM; 0: plain MAML on the same pseudo-labels
LEARNER_DIR=${LEARNER_DIR:-$RUN_DIR/$([ "$METALEARNER" = ep ] && echo ep || { [ "$PEM" = 1 ] && echo maml-pem || echo maml-nopem; })}
SPLIT=${SPLIT:-test}                  # test | val: the split the meta-tests and the baseline evaluate
TEST_SHOTS=${TEST_SHOTS-"1 5"}        # 5-way tests to run; empty: train only
TEST_TASKS=${TEST_TASKS:-1000}        # tasks per meta-test (and baseline)
PREPARE_ARGS=${PREPARE_ARGS:-}        # more options for each stage (see python -m STAGE --help), e.g.
CFE_ARGS=${CFE_ARGS:-}                #   MAML_ARGS="--first-order"; a run with other options needs its own
ENCODE_ARGS=${ENCODE_ARGS:-}          #   folder (RUN_DIR or LEARNER_DIR)
MAML_ARGS=${MAML_ARGS:-}
EP_ARGS=${EP_ARGS:-}
case "$METALEARNER" in maml|ep) ;; *) echo "error: METALEARNER must be maml or ep, got '$METALEARNER'" >&2; exit 2 ;; esac
case "$PEM" in 0|1) ;; *) echo "error: PEM must be 0 or 1, got '$PEM'" >&2; exit 2 ;; esac
case "$SPLIT" in test|val) ;; *) echo "error: SPLIT must be test or val, got '$SPLIT'" >&2; exit 2 ;; esac
[[ $NPROC =~ ^[1-9][0-9]*$ ]] || { echo "error: NPROC must be a positive integer, got '$NPROC'" >&2; exit 2; }

source scripts/env.sh
common=(--seed "$SEED" --device "$DEVICE" --threads "$THREADS")
scale=("$PYTHON")  # the stages that scale out: one process, or NPROC under torchrun on this machine
[ "$NPROC" = 1 ] || scale=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC")
step() { echo; echo "== $* =="; }

step "data -> $DATA_DIR"
if [ -f "$DATA_DIR/prepare.json" ]; then echo "exists, skipped"  # written last, once the splits are checked
else "$PYTHON" -m fewshot.datasets "$DATASET" ${SOURCE:+--source "$SOURCE"} --out "$DATA_DIR" $PREPARE_ARGS; fi
mkdir -p "$RUN_DIR"  # only now: a failed data stage leaves no empty run folder behind

step "CFE ($CFE_EPOCHS epochs) -> $RUN_DIR/cfe"
"${scale[@]}" -m cfe.train --data "$DATA_DIR/${DATASET}_cache_train.npz" --out "$RUN_DIR/cfe" --epochs "$CFE_EPOCHS" \
  "${common[@]}" --resume $CFE_ARGS

step "encode + k-means ($CLUSTERS clusters) -> $RUN_DIR/caches"
"$PYTHON" -m cfe.encode --checkpoint "$RUN_DIR/cfe/checkpoints/last.pt" --data-dir "$DATA_DIR" --dataset "$DATASET" \
  --out "$RUN_DIR/caches" --clusters "$CLUSTERS" "${common[@]}" --resume $ENCODE_ARGS

if [ "$METALEARNER" = maml ]; then
  step "MAML ($([ "$PEM" = 1 ] && echo "+ PEM" || echo "PEM off"), $MAML_EPOCHS epochs) -> $LEARNER_DIR"
  "${scale[@]}" -m maml.train --caches "$RUN_DIR/caches" --out "$LEARNER_DIR" --epochs "$MAML_EPOCHS" \
    $([ "$PEM" = 1 ] || echo --no-pem) "${common[@]}" --resume $MAML_ARGS
  test_args=(--steps "$TEST_STEPS")
else
  step "EP ($EP_PRETRAIN_EPOCHS pre-training + $EP_FINETUNE_EPOCHS fine-tuning epochs) -> $LEARNER_DIR"
  "$PYTHON" -m ep.train --caches "$RUN_DIR/caches" --out "$LEARNER_DIR" --pretrain-epochs "$EP_PRETRAIN_EPOCHS" \
    --finetune-epochs "$EP_FINETUNE_EPOCHS" "${common[@]}" --resume $EP_ARGS
  test_args=()
fi

for shots in $TEST_SHOTS; do
  step "meta-test on $SPLIT, 5-way $shots-shot ($METALEARNER)"
  # a result older than the model it tested (trained on since) is made again
  if [ "$LEARNER_DIR/results/${SPLIT}_5w${shots}s.json" -nt "$LEARNER_DIR/checkpoints/best.pt" ]; then
    echo "exists, skipped"
  else "$PYTHON" -m $METALEARNER.test --run "$LEARNER_DIR" --split "$SPLIT" --shots "$shots" "${test_args[@]}" \
    --tasks "$TEST_TASKS" --device "$DEVICE" --threads "$THREADS"; fi
done
if [ -n "$TEST_SHOTS" ]; then
  step "raw-pixel baseline on the same $SPLIT tasks -> $RUN_DIR/pixels"
  "$PYTHON" -m fewshot.baseline --cache "$DATA_DIR/${DATASET}_cache_$SPLIT.npz" --split "$SPLIT" \
    --out "$RUN_DIR/pixels" --shots $TEST_SHOTS --tasks "$TEST_TASKS"
  step "summary ($RUN_DIR/summary.md)"
  "$PYTHON" -m fewshot.report "$RUN_DIR"
fi
