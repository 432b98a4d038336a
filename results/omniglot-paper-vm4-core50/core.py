"""Pilot: a train cache that keeps only the members of each k-means cluster nearest its centre (the cluster's core,
a fraction of it), small clusters then repeated to 20 as cfe.encode does; the other caches are copied. Run from the
repository root, with the prepared Omniglot in data/omniglot:

    python core.py SRC_CACHES_DIR DST_CACHES_DIR FRACTION
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from cfe.encode import repeat_small_clusters
from fewshot.data import load_images, load_split, write_split

src, dst, frac = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
stem = "omniglot_64_K_500"
dst.mkdir(parents=True, exist_ok=False)
emb = np.load(src / f"{stem}_train_emb.npz")
Z, label = emb["Z"], emb["cluster_label"]  # one row per train image
centres = np.load(src / f"{stem}_train_clusters.npz")["cluster_centers"]
dist = ((Z - centres[label]) ** 2).sum(1)
keep = np.zeros(len(Z), bool)
for c in range(len(centres)):
    m = np.flatnonzero(label == c)
    keep[m[np.argsort(dist[m], kind="stable")][: max(1, int(round(frac * len(m))))]] = True
core = np.flatnonzero(keep)
sub = repeat_small_clusters(label[core], 20)  # positions in `core`
rows = core[sub]
train = load_split(src / f"{stem}_train.npz")  # for the prepared images and true labels (carried, never trained on)
X0 = load_images("data/omniglot/omniglot_cache_train.npz")
Y0 = np.load("data/omniglot/omniglot_cache_train.npz")["Y"]
meta = {**train.meta, "core_fraction": frac}
write_split(dst / f"{stem}_train.npz", X0[rows], Y0[rows], cluster_label=label[rows], index=rows, meta=meta)
for name in ("train_clusters", "train_emb", "val", "test"):
    shutil.copy(src / f"{stem}_{name}.npz", dst / f"{stem}_{name}.npz")
# pair precision: how often two kept members of one cluster share a true class (diagnostic only)
same = sum((b * (b - 1)).sum() for c in range(len(centres)) for b in [np.bincount(Y0[core[label[core] == c]])])
tot = sum(n * (n - 1) for n in np.bincount(label[core]))
print(json.dumps({"kept_images": int(len(core)), "rows": int(len(rows)), "pair_precision": same / tot}))
