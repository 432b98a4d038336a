"""Does the k-means flavour change the pseudo-labels? (diagnostic; reads the hidden train labels only to score)

Upstream (cfe/cfe_encoding.py) clusters the raw head outputs with scikit-learn's k-means++ and 10 restarts;
cfe.encode clusters the L2-normalised head outputs (the space the CFE loss compares in) with one faiss run.
This embeds the train split once with a cfe checkpoint and scores K-means on both feature kinds, 1 and 10 restarts.

    .venv/bin/python results/omniglot-paper/kmeans-variants/kmeans_variants.py CHECKPOINT DATA_DIR
"""

import argparse
import json
import time

import torch

from cfe.encode import embed, kmeans
from cfe.train import load_cfe
from fewshot.data import load_array, load_images
from fewshot.errors import cli_main
from fewshot.io import provenance
from fewshot.metrics import cluster_quality


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="cfe checkpoint (.pt)")
    p.add_argument("data_dir", help="folder with omniglot_cache_train.npz")
    args = p.parse_args(argv)
    ckpt, data_dir = args.checkpoint, args.data_dir
    torch.set_num_threads(1)  # cfe.encode's k-means follows torch's thread count
    model = load_cfe(ckpt)
    X = load_images(f"{data_dir}/omniglot_cache_train.npz")
    normalised = embed(model, X, 1024, torch.device("cpu"))
    model.embed = lambda x: model.encoder_q(x)  # the raw head output, as upstream clusters it
    raw = embed(model, X, 1024, torch.device("cpu"))
    Y = load_array(f"{data_dir}/omniglot_cache_train.npz", "Y")
    rows = []
    for name, Z in (("normalised", normalised), ("raw", raw)):
        for nredo in (1, 10):
            t = time.time()
            _, assign = kmeans(Z, 500, niter=100, seed=0, nredo=nredo)  # cfe.encode's k-means, with restarts
            q = cluster_quality(Y, assign)
            rows.append({"features": name, "nredo": nredo, "ari": q["ari"], "nmi": q["nmi"], "purity": q["purity"],
                         "seconds": round(time.time() - t, 1)})
            print(f"{name:10s} nredo {nredo:2d}: ARI {q['ari']:.3f} NMI {q['nmi']:.3f} purity {q['purity']:.3f}")
    print(json.dumps({"checkpoint": ckpt, "k": 500, "niter": 100, "seed": 0, "rows": rows, **provenance()}, indent=2))


if __name__ == "__main__":
    cli_main(main)
