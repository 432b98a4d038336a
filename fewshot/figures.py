"""Figures of a pipeline folder, or of a folder of pipeline folders: accuracy against shots, training curves, a
t-SNE map of the embedding and the pseudo-cluster sizes, as PNGs.

    python -m fewshot.figures runs/omniglot-quick [--out DIR]

Writes into RUNS_DIR/figures/ (beside fewshot.report's table) by default: accuracy_vs_shots.png and
training_curves.png over every run, embedding_map.png and cluster_sizes.png per pipeline (prefixed with the
pipeline's name when RUNS_DIR holds several). A figure without its inputs (no CFE checkpoint, no metrics) is
skipped with a note.
"""

import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fewshot.cli import make_parser, positive_int, seed_int
from fewshot.data import array_names, load_array, load_split
from fewshot.errors import UserError, cli_main
from fewshot.io import atomic_path, load_json, read_jsonl
from fewshot.report import RUN_PREFIXES, summarise

LEARNER_PREFIXES = ("maml", "ep", "protonet")  # runs with a training log (baselines train nothing)
MAX_POINTS, MAX_CLASSES = 2000, 20  # t-SNE's cost and a readable palette (tab20)


def save(fig: Figure, path) -> Figure:
    """Write `fig` as a PNG, atomically (a killed run leaves no half-written image); returns it for inspection."""
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global backend state
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)  # format given: the temporary name ends in .tmp
    return fig


def accuracy_vs_shots(lines: list, path) -> Figure:
    """lines: [{"label", "shots", "accuracy", "ci95"}] (accuracy and ci95 fractions; ci95 None: no interval)."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for line in lines:
        ax.errorbar(line["shots"], [100 * a for a in line["accuracy"]], yerr=[100 * (c or 0) for c in line["ci95"]],
                    marker="o", capsize=3, label=line["label"])
    shots = sorted({s for line in lines for s in line["shots"]})
    ax.set_xscale("log")  # 1, 5, 20, 50 shots: evenly spread
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.minorticks_off()
    ax.set(xlabel="shots per class", ylabel="accuracy (%), 95% CI", title="Accuracy against shots")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def training_curves(runs: list, path) -> Figure:
    """runs: [{"label", "pem": True/False/None, "rows": metrics.jsonl rows}]; PEM off dashed, EP's stage changes
    dotted vertical lines."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    loss_ax, val_ax = fig.subplots(1, 2)
    for i, run in enumerate(runs):
        rows = {r.get("epoch", n + 1): r for n, r in enumerate(run["rows"])}  # an epoch logged twice: the last
        epochs = sorted(rows)
        style = dict(color=f"C{i % 10}", linestyle="--" if run["pem"] is False else "-",
                     label=run["label"] + {True: " (PEM on)", False: " (PEM off)"}.get(run["pem"], ""))
        loss_ax.plot(epochs, [rows[e].get("loss", np.nan) for e in epochs], **style)
        val = [e for e in epochs if rows[e].get("val_acc") is not None]
        if val:
            val_ax.plot(val, [100 * rows[e]["val_acc"] for e in val], marker=".", **style)
        for prev, e in zip(epochs, epochs[1:]):
            if rows[e].get("stage") != rows[prev].get("stage"):  # EP: pre-training, then fine-tuning
                for ax in (loss_ax, val_ax):
                    ax.axvline(e - 0.5, color=style["color"], linestyle=":")
                    ax.text(e - 0.5, 0.98, f" {rows[e]['stage']} \u2192", color=style["color"], fontsize=7,
                            transform=ax.get_xaxis_transform(), va="top")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    val_ax.set(xlabel="epoch", ylabel="val accuracy (%)", title="Val accuracy (solid: PEM on or n/a, dashed: off)")
    if not val_ax.lines:
        val_ax.text(0.5, 0.5, "no val accuracy logged", ha="center", transform=val_ax.transAxes)
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
    loss_ax.legend(fontsize=7)
    return save(fig, path)


def pick(labels: np.ndarray, max_classes=MAX_CLASSES, max_points=MAX_POINTS, seed=0) -> tuple:
    """(row indices, note): the rows of the first `max_classes` labels, at most `max_points` of them drawn with a
    seeded RNG; the note says what was left out, for the panel's title."""
    classes = np.unique(labels)
    shown = classes[:max_classes]
    idx = np.flatnonzero(np.isin(labels, shown))
    note = f"first {len(shown)} of {len(classes)} classes" if len(shown) < len(classes) else f"{len(shown)} classes"
    if len(idx) <= max_points:
        return idx, note + f", all {len(idx)} points"
    note += f", random sample of {max_points} of {len(idx)} points (seed {seed})"
    return np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False)), note


def embedding_map(panels: list, path, seed=0) -> Figure:
    """panels: [(title, Z (N,D), labels (N,))], each already picked (`pick`): a seeded 2-D t-SNE per panel."""
    from sklearn.manifold import TSNE

    fig = Figure(figsize=(6 * len(panels), 5.5), layout="constrained")
    for ax, (title, Z, labels) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        n = len(Z)
        if n >= 4:  # t-SNE needs perplexity < n; ~n/3 keeps small samples' neighbourhoods local, 30 is the usual
            xy = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed).fit_transform(
                np.asarray(Z, np.float32))
            codes = np.unique(labels, return_inverse=True)[1]  # labels -> 0, 1, ... for the palette
            ax.scatter(xy[:, 0], xy[:, 1], c=codes, cmap="tab20" if codes.max() < 20 else "turbo", vmin=0,
                       vmax=max(19, codes.max()), s=6)
        else:
            ax.text(0.5, 0.5, f"{n} points: too few for t-SNE", ha="center", transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
        ax.set_title(title, fontsize=9)
    return save(fig, path)


def cluster_sizes(pseudo: np.ndarray, true: np.ndarray, path, min_size=None) -> Figure:
    """Histograms of pseudo-cluster sizes and true class sizes (images counted once each), on one axis."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(np.concatenate([pseudo, true]), bins=min(50, max(20, len(pseudo) // 5)))
    ax.hist(pseudo, bins=bins, alpha=0.6, label=f"{len(pseudo)} pseudo-clusters")
    ax.hist(true, bins=bins, alpha=0.6, label=f"{len(true)} true classes")
    if min_size:
        ax.axvline(min_size, color="k", linestyle=":", label=f"--min-cluster-size {min_size} (smaller: rows repeated)")
    ax.set(xlabel="images", ylabel="clusters / classes",
           title=f"Pseudo-cluster and true class sizes over {int(np.sum(true))} train images")
    ax.legend(fontsize=8)
    return save(fig, path)


def pipelines(root: Path) -> list:
    """[root] when root is a pipeline folder (caches/ or run folders), else its children that are."""
    def is_pipeline(p):
        return (p / "caches").is_dir() or any(c.is_dir() and c.name.startswith(RUN_PREFIXES) for c in p.iterdir())

    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    found = [root] if is_pipeline(root) else sorted(p for p in root.iterdir() if p.is_dir() and is_pipeline(p))
    if not found:
        raise UserError(f"{root}: no pipeline folders (caches/, maml*/, ep*/, protonet*/, pixels/, embedding*/)")
    return found


def accuracy_lines(pipes: list, name) -> list:
    """One line per table row (fewshot.report.summarise) and number of ways: a run's test rows, or its val rows
    when it has no test results."""
    rows, errors = [], []
    for p in pipes:
        try:
            rows += summarise(p)
        except UserError as e:  # one pipeline of several without results (yet) is left out, and said so
            if len(pipes) == 1:
                raise
            errors.append(e)
            print(f"note: {p}: left out ({e})")
    if not rows:
        raise UserError(f"no results in any pipeline folder ({errors[0]})")
    tested, lines = {r["run"] for r in rows if r["split"] == "test"}, {}
    for r in (r for r in rows if r["split"] == ("test" if r["run"] in tested else "val")):
        for key, m in ((k, re.fullmatch(r"(\d+)w(\d+)s", k)) for k in r):
            if m:
                lines.setdefault((r["run"], r["method"], r["split"], int(m[1])), {})[int(m[2])] = r[key]
    several_ways = len({k[3] for k in lines}) > 1
    return [{"label": f"{name(Path(run).parent)}{Path(run).name}: {method}"
             + (f", {ways}-way" if several_ways else "") + (" (val)" if split == "val" else ""),
             "shots": sorted(res), "accuracy": [res[s]["accuracy"] for s in sorted(res)],
             "ci95": [res[s]["ci95"] for s in sorted(res)]} for (run, method, split, ways), res in lines.items()]


def learner_runs(pipes: list, name) -> list:
    runs = []
    for p in pipes:
        for run in sorted(c for c in p.iterdir() if c.is_dir() and c.name.startswith(LEARNER_PREFIXES)):
            if (run / "metrics.jsonl").is_file() and (run / "config.json").is_file():
                cfg = load_json(run / "config.json")
                rows = read_jsonl(run / "metrics.jsonl")
                if not isinstance(cfg, dict) or not all(isinstance(r, dict) for r in rows):
                    raise UserError(f"{run}: config.json and metrics.jsonl must hold JSON objects")
                pem = bool(cfg["pem"]) if run.name.startswith("maml") and "pem" in cfg else None
                runs.append({"label": name(p) + run.name, "pem": pem, "rows": rows})
    return runs


def embedding_panels(caches: Path, enc: dict, args) -> tuple:
    """(panels, None), or (None, why not): test images embedded on the CPU with encode.json's checkpoint, and the
    train embeddings Z by pseudo-label."""
    import torch

    from cfe.encode import embed
    from cfe.upstream import load_any

    ckpt, names = enc.get("checkpoint"), enc.get("caches") or {}
    if not ckpt or not Path(ckpt).is_file():
        return None, f"the CFE checkpoint {ckpt or '(none recorded)'} in {caches / 'encode.json'} is missing"
    if "test" not in names or "train_emb" not in names:
        return None, f"{caches / 'encode.json'} names no test cache or train embeddings"
    test = load_split(caches / names["test"])
    idx, note = pick(test.Y, args.max_classes, args.max_points, args.seed)
    Z_test = embed(load_any(ckpt, "cpu"), np.ascontiguousarray(test.X[idx]), 256, torch.device("cpu"))
    emb = caches / names["train_emb"]
    Z = load_array(emb, "Z")
    # cfe.encode's Z has one row per train image with its cluster_label; upstream's, one per train cache row
    own = "cluster_label" in array_names(emb)
    pseudo = load_array(emb if own else caches / names["train"], "cluster_label")
    if len(pseudo) != len(Z):
        raise UserError(f"{emb}: {len(Z)} embeddings but {len(pseudo)} pseudo-labels")
    jdx, train_note = pick(pseudo, args.max_classes, args.max_points, args.seed)
    return [(f"test embeddings by true class\n{note}", Z_test, test.Y[idx]),
            (f"train embeddings by pseudo-label\n{train_note}", Z[jdx], pseudo[jdx])], None


def sizes(train: Path) -> tuple:
    """(pseudo-cluster sizes, true class sizes) over distinct images: `index` maps the cache's rows (small
    clusters' repeats, one row per partition) to images."""
    label, Y = load_array(train, "cluster_label"), load_array(train, "Y")
    index = load_array(train, "index") if "index" in array_names(train) else np.arange(len(Y))
    pairs = np.unique(np.stack([label, index]), axis=1)  # each image once per cluster it is in
    _, first = np.unique(index, return_index=True)
    return np.unique(pairs[0], return_counts=True)[1], np.unique(Y[first], return_counts=True)[1]


def get_parser():
    p = make_parser("python -m fewshot.figures", __doc__)
    p.add_argument("runs_dir", help="a pipeline folder (caches/, maml-*/, ...) or a folder of them")
    p.add_argument("--out", help="folder for the PNGs (default: RUNS_DIR/figures)")
    p.add_argument("--max-points", type=positive_int, default=MAX_POINTS, help="t-SNE points per panel at most")
    p.add_argument("--max-classes", type=positive_int, default=MAX_CLASSES, help="classes per t-SNE panel at most")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the t-SNE and of its subsample")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    root = Path(args.runs_dir)
    pipes = pipelines(root)
    out = Path(args.out) if args.out else root / "figures"
    single = pipes == [root]

    def name(p):  # runs of a folder of pipelines are named with their pipeline's
        return "" if single else f"{p.name}/"

    lines, runs = accuracy_lines(pipes, name), learner_runs(pipes, name)  # read before anything is drawn
    written = [out / "accuracy_vs_shots.png"]
    accuracy_vs_shots(lines, written[0])
    if runs:
        written.append(out / "training_curves.png")
        training_curves(runs, written[-1])
    else:
        print(f"note: no learner runs with metrics.jsonl in {root}: training_curves.png skipped")
    for p in pipes:
        caches, stem = p / "caches", "" if single else f"{p.name}_"
        if not (caches / "encode.json").is_file():
            print(f"note: {caches / 'encode.json'} not found: {stem}embedding_map.png and cluster_sizes.png skipped")
            continue
        enc = load_json(caches / "encode.json")
        if not isinstance(enc, dict) or "train" not in (enc.get("caches") or {}):
            raise UserError(f"{caches / 'encode.json'}: expected a JSON object naming the train cache under 'caches'")
        panels, why = embedding_panels(caches, enc, args)
        if panels:
            written.append(out / f"{stem}embedding_map.png")
            embedding_map(panels, written[-1], args.seed)
            print(f"{written[-1].name}: " + "; ".join(t.replace("\n", ": ") for t, _, _ in panels))
        else:
            print(f"note: {why}: {stem}embedding_map.png skipped")
        written.append(out / f"{stem}cluster_sizes.png")
        cluster_sizes(*sizes(caches / enc["caches"]["train"]), written[-1], enc.get("min_cluster_size"))
    print("wrote:\n" + "\n".join(f"  {w}" for w in written))


if __name__ == "__main__":
    cli_main(main)
