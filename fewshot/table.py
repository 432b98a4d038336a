"""The comparison table of a folder of pipeline folders: what `python -m fewshot.report RUNS_DIR` writes when
RUNS_DIR holds pipelines (each a child with caches/encode.json and its learners' run folders) rather than being one,
as scripts/omniglot_table.sh makes it.

One row per task construction x meta-learner (and per pipeline folder), one column per ways/shots found among the
results (5-way 1-shot ... 20-way 5-shot), each cell the mean accuracy ± 95% CI of the runs' own results; val and
test are separate tables. The task construction is named from the pipeline's encode.json ("CFE k-means", "MoCo
k-means", "k-means on pixels", ...) and the meta-learner from each run's config.json; the runs of one pipeline with
the same meta-learner share a row when their cells do not overlap (a 20-way meta-training run gives the 20-way
columns of its 5-way sibling's row). Every row that trained on true labels (oracle caches, or a learner run with
--supervised) is marked supervised. The raw-pixel and frozen-embedding baselines (pixels*/, embedding*/) may sit
in any child or at the top; the same baseline found twice (the same results) is one row. Results of semi-supervised
tasks stay in each pipeline's own table (fewshot.report PIPELINE).

For Omniglot, the literature's numbers follow the measured rows in a table of their own, marked "cited, not run
here": other implementations, budgets and tasks, so never paired with or sorted among the rows measured here.
"""

from pathlib import Path

from fewshot.errors import UserError
from fewshot.io import load_json
from fewshot.metrics import format_accuracy
from fewshot.report import LEARNERS, RUN_PREFIXES, _number, _object, _results

# Published 5-way accuracies (fractions), test split of Omniglot (the CACTUs split used here too):
# CACTUs-MAML (ACAI embedding) and supervised MAML on the same split from Hsu, Levine and Finn, "Unsupervised
# Learning via Meta-Learning", ICLR 2019 (Table 1); UMTRA from Khodadadeh, Bölöni and Shah, "Unsupervised
# Meta-Learning for Few-Shot Image Classification", NeurIPS 2019.
CITED = {"omniglot": [
    {"method": "CACTUs-MAML", "5w1s": 0.6884, "5w5s": 0.8778, "source": "Hsu et al. 2019", "supervised": False},
    {"method": "UMTRA", "5w1s": 0.8380, "5w5s": 0.9543, "source": "Khodadadeh et al. 2019", "supervised": False},
    {"method": "MAML, true labels (supervised)", "5w1s": 0.9446, "5w5s": 0.9883, "source": "Hsu et al. 2019",
     "supervised": True},
]}
CITED_MARK = "(cited, not run here)"

CONSTRUCTION_ORDER = ("CFE", "MoCo", "k-means on pixels", "random labels", "true labels")
LEARNER_ORDER = ("MAML + PEM", "MAML (PEM off)", "EP", "ProtoNets")
CELL_KEYS = ("accuracy", "ci95", "tasks", "steps", "tasks_sha256")


def _folders(root: Path) -> list:
    return sorted(p for p in root.iterdir() if p.is_dir())


def _runs(folder: Path) -> list:
    """The run folders of a pipeline folder (maml*/, ep*/, protonet*/, pixels*/, embedding*/ with a config.json)."""
    return [p for p in _folders(folder) if p.name.startswith(RUN_PREFIXES) and (p / "config.json").is_file()]


def _encode_json(folder: Path) -> Path:
    return folder / "caches" / "encode.json"


def is_collection(root: Path) -> bool:
    """Whether `root` is a folder of pipeline folders: no caches/ or learner run of its own, and a child with
    caches/encode.json. Anything else is one pipeline folder (fewshot.report's own table)."""
    if not root.is_dir() or (root / "caches").exists():
        return False
    if any("method" not in _object(r / "config.json", load_json(r / "config.json")) for r in _runs(root)):
        return False  # a learner run at the top: root is a pipeline
    return any(_encode_json(c).is_file() for c in _folders(root))


def construction(enc: dict, path) -> str:
    """The task construction that a pipeline's encode.json records, in the table's words."""
    labels = enc.get("labels") or "kmeans"  # caches from before --labels are k-means of a CFE embedding
    if labels == "oracle" or enc.get("supervised"):
        return "true labels (oracle, supervised)"
    parts = _number(enc, "partitions", path) or 1
    smooth = _number(enc, "knn_smooth", path)
    several = f"{parts:g} k-means partitions (CACTUs-style)" if parts > 1 else ""
    if labels == "kmeans":
        embedding = "MoCo" if enc.get("embedding_loss") == "moco" else "CFE"
        name = f"{embedding}, {several}" if several else f"{embedding} k-means"
    elif labels == "pixels":
        name = "k-means on pixels" + (f", {parts:g} partitions (CACTUs-style)" if several else "")
    elif labels == "random":
        name = "random labels" + (f", {parts:g} draws" if several else "")
    else:
        raise UserError(f"{path}: unknown 'labels' {labels!r} (expected kmeans, pixels, random or oracle)")
    return name + (f", embeddings smoothed over {smooth:g} neighbours" if smooth else "")


def _learner(cfg: dict) -> str:
    return LEARNERS.get(cfg.get("learner")) or ("MAML + PEM" if cfg.get("pem") else "MAML (PEM off)")


def _entries(root: Path, folder: Path, enc: dict | None) -> list:
    """One entry per split of each run in `folder`: a pipeline's learners and baselines (`enc`: its encode.json),
    or with `enc` None the baselines of another folder."""
    path = _encode_json(folder)
    made = None if enc is None else construction(enc, path)
    quality = {} if enc is None else _object(path, enc.get("pseudo_label_quality") or {})
    out = []
    for run in _runs(folder):
        cfg = _object(run / "config.json", load_json(run / "config.json"))
        name = str(run.relative_to(root))
        if "method" in cfg:  # fewshot.baseline: no task construction, no pseudo-labels
            row = {"pipeline": None, "construction": "-", "learner": cfg["method"], "supervised": False,
                   "ari": None, "nmi": None}
        elif made is None:
            continue  # a learner outside a pipeline folder: its caches are unknown
        else:
            oracle = made.startswith("true labels")
            supervised = oracle or bool(cfg.get("supervised"))
            read = oracle or not supervised  # a --supervised run on pseudo-labelled caches never read those labels
            row = {"pipeline": folder.name, "construction": made if read else "true labels (supervised)",
                   "learner": _learner(cfg), "supervised": supervised,
                   **{k: _number(quality, k, path) if read else None for k in ("ari", "nmi")}}
            if (cfg.get("ways") or 5) != 5:
                name += f" ({cfg['ways']}-way meta-training)"
        for (split, semi, key), r in _results(run).items():
            if semi != (0, 0):
                continue
            entry = next((e for e in out if e["run"] == name and e["split"] == split), None)
            if entry is None:
                entry = {**row, "split": split, "run": name, "cells": {}}
                out.append(entry)
            entry["cells"][key] = {**{k: r.get(k) for k in CELL_KEYS}, "run": name}
    return out


def _same(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in CELL_KEYS)


def _merge(rows: list, entry: dict) -> None:
    """Add a run's entry to the row of the same pipeline, construction, meta-learner and split when none of their
    cells differ (the same cell twice: the same result, found in two places); else it is a row of its own."""
    key = ("pipeline", "construction", "learner", "supervised", "split")
    for row in rows:
        if all(row[k] == entry[k] for k in key) and all(
                _same(row["cells"][c], entry["cells"][c]) for c in set(row["cells"]) & set(entry["cells"])):
            row["runs"].append(entry["run"])
            for c, cell in entry["cells"].items():
                row["cells"].setdefault(c, cell)
            return
    rows.append({**{k: v for k, v in entry.items() if k != "run"}, "runs": [entry["run"]]})


def _rank(name: str, order) -> int:
    return next((i for i, prefix in enumerate(order) if name.startswith(prefix)), len(order))


def _order(row: dict) -> tuple:
    group = 2 if row["supervised"] else 1 if row["pipeline"] is None else 0  # learners, baselines, supervised
    return (group, _rank(row["construction"], CONSTRUCTION_ORDER), row["construction"], row["pipeline"] or "",
            _rank(row["learner"], LEARNER_ORDER), row["learner"])


def _datasets(root: Path) -> set:
    found = set()
    for folder in [root, *_folders(root)]:
        if _encode_json(folder).is_file():
            found.add(load_json(_encode_json(folder)).get("dataset"))
        for run in _runs(folder):
            cfg = load_json(run / "config.json")
            found.add(cfg.get("dataset"))
            if isinstance(cfg.get("cache"), str):  # fewshot.baseline's --cache: {dataset}_cache_{split}.npz
                found.add(Path(cfg["cache"]).name.split("_cache_")[0])
    return found


def comparison(root: Path) -> dict:
    """{"splits": {split: {"columns": [...], "rows": [...]}}, "cited": [...], "datasets": [...]} of a folder of
    pipeline folders."""
    rows = []
    pipelines = [c for c in _folders(root) if _encode_json(c).is_file()]
    for folder in [root, *_folders(root)]:
        enc = None
        if folder in pipelines:
            enc = _object(_encode_json(folder), load_json(_encode_json(folder)))
        for entry in _entries(root, folder, enc):
            _merge(rows, entry)
    if not rows:
        raise UserError(f"{root}: no pipeline folder (caches/encode.json) with learner or baseline results")
    splits = {}
    for split in ("val", "test"):
        these = sorted((r for r in rows if r["split"] == split), key=_order)
        if these:
            cells = {c for r in these for c in r["cells"]}
            columns = sorted(cells, key=lambda c: tuple(int(x) for x in c[:-1].split("w")))
            splits[split] = {"columns": columns, "rows": these}
    datasets = sorted(d for d in _datasets(root) if isinstance(d, str))
    cited = [{**c, "dataset": d, "cited": True} for d in datasets for c in CITED.get(d, [])]
    return {"kind": "comparison", "datasets": datasets, "splits": splits, "cited": cited}


def _heading(column: str) -> str:
    ways, shots = column[:-1].split("w")
    return f"{ways}-way {shots}-shot"


def _steps(rows: list) -> list:
    return sorted({c["steps"] for r in rows for c in r["cells"].values() if c.get("steps")})


def _notes(rows: list) -> str:
    tasks = sorted({c["tasks"] for r in rows for c in r["cells"].values()})
    steps = _steps(rows)
    return (f"Each cell: mean accuracy ± 95% CI over {' / '.join(map(str, tasks))} tasks"
            + (f"; MAML adapts {steps[0]} steps at test" if len(steps) == 1 else "") + ".")


def to_markdown(doc: dict) -> str:
    def num(x):
        return "-" if x is None else f"{x:.3f}"

    def cell(c, several_steps):
        if c is None:
            return "-"
        steps = f" ({c['steps']} steps)" if several_steps and c.get("steps") else ""
        return format_accuracy(c["accuracy"], c["ci95"]) + steps

    lines = []
    for split, table in doc["splits"].items():
        cols = table["columns"]
        lines += [f"## {split} split", "", "| task construction | meta-learner | " + " | ".join(map(_heading, cols))
                  + " | ARI | NMI | runs |", "|---|---|" + "---|" * (len(cols) + 3)]
        several_steps = len(_steps(table["rows"])) > 1  # then each MAML cell says its own
        for r in table["rows"]:
            cells = [cell(r["cells"].get(c), several_steps) for c in cols]
            lines.append(f"| {r['construction']} | {r['learner']} | " + " | ".join(cells)
                         + f" | {num(r['ari'])} | {num(r['nmi'])} | {', '.join(r['runs'])} |")
        lines += ["", _notes(table["rows"]) + " ARI / NMI: the pseudo-labels against the hidden true labels "
                  "(mean over partitions). Rows marked supervised trained on true labels: a ceiling, not "
                  "unsupervised meta-learning.", ""]
    if doc["cited"]:
        lines += [f"## published results {CITED_MARK}", "",
                  "Test accuracies as their papers report them: other code, budgets and tasks, so not paired with "
                  "the rows above.", "", "| dataset | method | 5-way 1-shot | 5-way 5-shot | source |",
                  "|---|---|---|---|---|"]
        for c in doc["cited"]:
            lines.append(f"| {c['dataset']} | {c['method']} {CITED_MARK} | {100 * c['5w1s']:.2f} % "
                         f"| {100 * c['5w5s']:.2f} % | {c['source']} |")
        lines.append("")
    return "\n".join(lines)
