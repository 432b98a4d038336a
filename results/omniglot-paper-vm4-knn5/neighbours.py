"""Pseudo-label diagnostics for cfe.encode --knn-smooth, on the PRESET=paper seed-0 embedding of the fourth VM.

How often a train image's nearest neighbours in the CFE embedding share its true class, and how well k-means
(K = 500, 20 iterations, seed 0) agrees with the true classes on the embedding and on each embedding averaged
with its k nearest neighbours. The true labels are read only to score. Run from the repository root once
runs/omniglot-paper-vm4/caches exists (RESULTS.md, the paper preset's fourth-VM command); output: neighbours.txt.
"""

import faiss
import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from cfe.encode import knn_smooth

Z = np.load("runs/omniglot-paper-vm4/caches/omniglot_64_K_500_train_emb.npz")["Z"].astype(np.float32)
Y = np.load("data/omniglot/omniglot_cache_train.npz")["Y"]  # one row per train image, as Z
assert len(Y) == len(Z)
faiss.omp_set_num_threads(2)


def kmeans(X, k=500, seed=0):
    km = faiss.Kmeans(X.shape[1], k, niter=20, seed=seed, max_points_per_centroid=len(X), verbose=False)
    km.train(X)
    return km.index.search(X, 1)[1].ravel()


index = faiss.IndexFlatIP(Z.shape[1])
index.add(Z)
_, nb = index.search(Z, 21)  # nb[:, 0] is the image itself
for k in (1, 5, 10, 20):
    print(f"neighbours of the same true class, k = {k:2d}: {(Y[nb[:, 1:k + 1]] == Y[:, None]).mean():.3f}")
for m in (0, 3, 5, 10):
    a = kmeans(knn_smooth(Z, m))
    print(f"k-means on embeddings averaged with {m:2d} neighbours: ARI {adjusted_rand_score(Y, a):.3f} "
          f"NMI {normalized_mutual_info_score(Y, a):.3f}")
