#!/usr/bin/env bash
# Meta-test a trained PL-CFE model on characters its CFE and MAML stages saw (without labels), as upstream test.py
# does: it reads torchmeta's Vinyals test split (423 characters of images_evaluation), while the upstream cache's
# train split (1,100 characters) is drawn from both official zips.
#   seen: every character of the cache's train split (its true labels, for scoring only)
#   mix:  423 characters in the proportions a uniformly random 1,100/100/423 split of the 1,623 characters gives a
#         fixed set of 423 (287 train, 26 val, 110 test), the expected make-up of upstream's test characters
# Run from the repository root after scripts/omniglot.sh has prepared data/omniglot and trained the model.
# maml.test refuses test classes the run trained on unless told --allow-seen-classes (added after these results
# were recorded without it; it changes nothing else).
set -euo pipefail
PY=.venv/bin/python
RUN=${RUN:-runs/omniglot-paper-faithful/maml-pem}
OUT=${OUT:-runs/exp/seen-characters}
mkdir -p "$OUT"
$PY - "$OUT" <<'PYEOF'
import sys
import numpy as np
from fewshot.data import load_split, write_split

out = sys.argv[1]
splits = {s: load_split(f"data/omniglot/omniglot_cache_{s}.npz") for s in ("train", "val", "test")}
write_split(f"{out}/seen.npz", splits["train"].X, splits["train"].Y)
rng = np.random.default_rng(0)  # the characters drawn for the mix
X, Y = [], []
for s, n in (("train", 287), ("val", 26), ("test", 110)):
    chars = rng.choice(np.unique(splits[s].Y), size=n, replace=False)
    keep = np.isin(splits[s].Y, chars)
    X.append(splits[s].X[keep])
    Y.append(splits[s].Y[keep])
write_split(f"{out}/mix.npz", np.concatenate(X), np.concatenate(Y))
print({k: len(np.unique(v.Y)) for k, v in splits.items()}, "mix:", len(np.unique(np.concatenate(Y))))
PYEOF
for pool in seen mix; do
  $PY -m maml.test --run "$RUN" --cache "$OUT/$pool.npz" --allow-seen-classes --shots 1 --tasks 1000 --steps 50 --seed 0 \
    --output "$OUT/$pool-5w1s.json"
done
$PY -m maml.test --run "$RUN" --cache "$OUT/mix.npz" --allow-seen-classes --shots 5 --tasks 1000 --steps 50 --seed 0 \
  --output "$OUT/mix-5w5s.json"
