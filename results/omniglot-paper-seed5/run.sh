# PRESET=paper SEED=5, every stage from scratch, meta-trained once for 60 epochs with a snapshot every epoch (as the
# SEED=4 record, results/omniglot-paper-seed4); then the 60-epoch model (best.pt) and the epoch a 20-epoch run
# selects (maml.test --checkpoint best@20), each at 1 and 5 shots on the tasks of --seed 0, the tasks of the other
# seeds' records; run from the repository root
set -e
export OMNIGLOT_SOURCE=../shared/data/omniglot/omniglot.tar.xz RUN_DIR=runs/omniglot-paper-seed5
PRESET=paper SEED=5 MAML_EPOCHS=60 MAML_SAVE_EVERY=1 MAML_DIR=$RUN_DIR/maml-pem-curve TEST_SHOTS= bash scripts/omniglot.sh
D=$RUN_DIR/maml-pem-curve
.venv/bin/python -m maml.test --run $D --shots 1 --seed 0                         # 60 epochs: best.pt
.venv/bin/python -m maml.test --run $D --checkpoint best@20 --shots 1 --seed 0    # the 20-epoch selection
.venv/bin/python -m maml.test --run $D --shots 5 --seed 0
.venv/bin/python -m maml.test --run $D --checkpoint best@20 --shots 5 --seed 0
# added after the lines above had run: the epochs 30-, 40- and 50-epoch runs select, at 1 shot on the same tasks
for n in 30 40 50; do .venv/bin/python -m maml.test --run $D --checkpoint best@$n --shots 1 --seed 0; done
