#!/usr/bin/env bash
# The same trained MAML models meta-tested on the same episodes of the test characters in the two small official
# zips, once with the cache's pixels (nearest-neighbour) and once with upstream test.py's (torchmeta: bilinear).
# Run from the repository root after scripts/omniglot.sh has prepared data/omniglot and trained the models.
set -euo pipefail
PY=.venv/bin/python
ZIPS=${ZIPS:-../shared/data/omniglot-official}
OUT=${OUT:-runs/exp/torchmeta-pixels}
for px in cache torchmeta; do
  $PY -m fewshot.torchmeta_split --zips "$ZIPS" --cache-dir data/omniglot --out "$OUT/$px" --partial --pixels $px
done
evaluate() {  # model-name run-folder shots
  for px in cache torchmeta; do
    $PY -m maml.test --run "$2" --cache "$OUT/$px/omniglot_cache_test.npz" --shots "$3" --tasks 1000 --steps 50 \
      --seed 0 --output "$OUT/$1-$px-5w$3s.json"
  done
}
evaluate plcfe-paper runs/omniglot-paper-faithful/maml-pem 1
evaluate supervised runs/omniglot-supervised/maml 1
evaluate plcfe-paper runs/omniglot-paper-faithful/maml-pem 5
