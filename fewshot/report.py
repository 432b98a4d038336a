"""Summarise a pipeline folder (cfe/, caches/, maml-*/) as a table: accuracy ± 95% CI, pseudo-label quality,
wall time per stage.

    python -m fewshot.report runs/omniglot-quick

Wall times are read from each stage's own logs (sums of epoch times, so a resumed run counts its work once).
Writes summary.json and summary.md into the folder and prints the table.
"""

import argparse
import math
import re
from pathlib import Path

from fewshot.cli import HelpFormatter
from fewshot.errors import UserError, cli_main
from fewshot.io import atomic_path, load_json, read_jsonl, save_json


def result_name(ways: int, shots: int, source=None, checkpoint=None) -> str:
    """A test result's file name in a run's results/: test_{ways}w{shots}s.json for the run's own test split and
    its selected (best) checkpoint; tasks from another cache or episodes file `source`, or another `checkpoint`
    (last, a snapshot), add their names: test_5w1s_{source}_{checkpoint}.json. Only the first kind is tabled."""
    extra = [Path(x).stem for x in (source, checkpoint) if x]
    return f"test_{ways}w{shots}s" + "".join(f"_{x}" for x in extra) + ".json"


OWN_RESULT = re.compile(r"test_\d+w\d+s\.json")  # result_name of the own test split and best checkpoint


# Run files are read as they are found: anything malformed in them is a one-line UserError naming the file.
def _object(path, obj) -> dict:
    """`obj`, read from `path`, if it is a JSON object (config.json, encode.json, a result, a metrics row)."""
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _number(obj: dict, key: str, path, required=False):
    """obj[key] as a finite number (json reads Infinity and NaN, which round() and sums cannot take); None when
    absent or null unless `required`."""
    value = obj.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        got = repr(value)[:60] if key in obj else "nothing"
        raise UserError(f"{path}: '{key}' must be a finite number, got {got}")
    return value


def _epoch_seconds(run: Path):
    m = run / "metrics.jsonl"
    if not m.is_file():
        return None
    last = {}  # an epoch logged again (killed after logging it, before its checkpoint) counts once: the last row
    for i, row in enumerate(read_jsonl(m)):
        row = _object(m, row)
        last[_number(row, "epoch", m) if "epoch" in row else i] = _number(row, "seconds", m) or 0
    return round(sum(last.values()))


def _minutes(seconds):
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def summarise(root: Path) -> list:
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    encode_json = root / "caches" / "encode.json"
    enc = _object(encode_json, load_json(encode_json)) if encode_json.is_file() else {}
    quality = _object(encode_json, enc.get("pseudo_label_quality") or {})
    ari, nmi = (_number(quality, k, encode_json) for k in ("ari", "nmi"))  # with partitions: their mean
    # pseudo-labels made otherwise than the paper's (cfe.encode --knn-smooth, --partitions) say so in the table
    smooth, parts = (_number(enc, k, encode_json) for k in ("knn_smooth", "partitions"))
    variant = ", ".join(([f"{parts:g} k-means partitions"] if parts and parts > 1 else [])
                        + ([f"embeddings smoothed over {smooth:g} neighbours"] if smooth else []))
    rows = []
    for run in sorted(root.glob("maml*")):
        if not (run / "config.json").is_file():
            continue
        cfg = _object(run / "config.json", load_json(run / "config.json"))
        method = ("MAML, true labels (supervised)" if cfg.get("supervised")
                  else "MAML + PEM" if cfg.get("pem") else "MAML (PEM off)")
        if variant and not cfg.get("supervised"):
            method += f", {variant}"
        row = {"method": method, "run": str(run),
               "maml_epochs": cfg.get("epochs"),
               "ari": ari, "nmi": nmi,
               "seconds": {"cfe": _epoch_seconds(root / "cfe"), "encode": _number(enc, "seconds", encode_json),
                           "maml": _epoch_seconds(run)}}
        test_seconds = 0
        for res in sorted(p for p in (run / "results").glob("test_*.json") if OWN_RESULT.fullmatch(p.name)):
            r = _object(res, load_json(res))
            ways, shots, accuracy, tasks, steps = (_number(r, k, res, required=True)
                                                   for k in ("ways", "shots", "accuracy", "tasks", "steps"))
            if "ci95" in r and r["ci95"] is None:  # maml.test writes null for a test of one task: no interval
                ci95 = None
            else:
                ci95 = _number(r, "ci95", res, required=True)
            row[f"{ways}w{shots}s"] = dict(accuracy=accuracy, ci95=ci95, tasks=tasks, steps=steps)
            test_seconds += _number(r, "seconds", res) or 0
        row["seconds"]["test"] = round(test_seconds)
        rows.append(row)
    if not rows:
        raise UserError(f"{root}: no maml run folders with results")
    return rows


def to_markdown(rows) -> str:
    def acc(r, key):
        if key not in r:
            return "-"
        t = r[key]
        ci = "no interval" if t["ci95"] is None else f"± {100 * t['ci95']:.2f}"
        return f"{100 * t['accuracy']:.2f} {ci} ({t['tasks']} tasks, {t['steps']} steps)"

    def num(x):
        return "-" if x is None else f"{x:.3f}"

    lines = ["| run | method | MAML epochs | 5-way 1-shot (%) | 5-way 5-shot (%) | ARI | NMI "
             "| CFE min | encode min | MAML min | test min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["seconds"]
        times = " | ".join(_minutes(s[k]) for k in ("cfe", "encode", "maml", "test"))
        lines.append(f"| {Path(r['run']).name} | {r['method']} | {r['maml_epochs'] or '-'} "
                     f"| {acc(r, '5w1s')} | {acc(r, '5w5s')} | {num(r['ari'])} | {num(r['nmi'])} | {times} |")
    return "\n".join(lines) + "\n"


def get_parser():
    p = argparse.ArgumentParser(prog="python -m fewshot.report", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("root", help="pipeline folder holding cfe/, caches/ and maml-*/")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    root = Path(args.root)
    rows = summarise(root)
    table = to_markdown(rows)
    save_json(root / "summary.json", rows)
    with atomic_path(root / "summary.md") as tmp:
        tmp.write_text(table)
    print(table, end="")


if __name__ == "__main__":
    cli_main(main)
