"""Summarise a pipeline folder (cfe/, caches/, maml-*/, ep-*/, protonet-*/, pixels/, embedding/) as a table:
accuracy ± 95% CI on val and test, pseudo-label quality, wall time per stage, and each run's paired difference
from the raw-pixel baseline (embedding/: fewshot.baseline --checkpoint, the CFE embedding's nearest prototype).

    python -m fewshot.report runs/omniglot-quick
    python -m fewshot.report runs/omniglot-table-quick   # a folder of pipeline folders: the comparison table

Given a folder of pipeline folders (children with caches/encode.json, as scripts/omniglot_table.sh makes), it
writes the comparison table instead (fewshot/table.py): task construction x meta-learner against the ways/shots
found, val and test apart, with the literature's numbers for Omniglot in a table of their own.

Wall times are read from each stage's own logs (sums of epoch times, so a resumed run counts its work once).
Writes summary.json and summary.md into the folder and prints the table.
"""

import math
import re
from pathlib import Path

from fewshot.cli import make_parser
from fewshot.errors import UserError, cli_main
from fewshot.io import atomic_path, load_json, read_jsonl, save_json
from fewshot.metrics import format_accuracy, paired_difference


def result_name(split: str, ways: int, shots: int, source=None, checkpoint=None, unlabeled=0, distractors=0) -> str:
    """A result's file name in a run's results/: {split}_{ways}w{shots}s.json (split: val or test) for the run's
    own split and its selected (best) checkpoint, with _{U}u (U unlabelled images per way) and {D}d (D distractor
    classes) for semi-supervised tasks; tasks from another cache or episodes file `source`, or another
    `checkpoint` (last, a snapshot), add their names: test_5w1s_{source}_{checkpoint}.json. Only the first kind
    is tabled."""
    semi = [f"{unlabeled}u" + (f"{distractors}d" if distractors else "")] if unlabeled else []
    extra = semi + [Path(x).stem for x in (source, checkpoint) if x]
    return f"{split}_{ways}w{shots}s" + "".join(f"_{x}" for x in extra) + ".json"


OWN_RESULT = re.compile(r"(val|test)_\d+w\d+s(_\d+u(\d+d)?)?\.json")  # of an own split and the best checkpoint


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


def _results(run: Path) -> dict:
    """{(split, (unlabeled, distractors), "5w1s"): result} of a run's own results (its own splits, its selected
    checkpoint)."""
    out = {}
    for path in sorted((run / "results").glob("*.json")):
        if not OWN_RESULT.fullmatch(path.name):
            continue
        r = _object(path, load_json(path))
        for k in ("ways", "shots", "accuracy", "tasks"):
            _number(r, k, path, required=True)
        semi = tuple(int(_number(r, k, path) or 0) for k in ("unlabeled", "distractors"))
        _number(r, "seconds", path)
        _number(r, "steps", path)  # adaptation steps: MAML's, not EP's
        if "ci95" not in r or r["ci95"] is not None:  # null for a test of one task: no interval
            _number(r, "ci95", path, required=True)
        out[(path.name.split("_")[0], semi, f"{r['ways']}w{r['shots']}s")] = r
    return out


SAME_TASKS = ("split", "ways", "shots", "queries", "tasks", "seed", "tasks_sha256")  # shared by paired results


def task_mismatch(a: dict, b: dict) -> str:
    """'' when results a and b hold per-task accuracies of the same sampled tasks (maml.test or fewshot.baseline
    with the same split, cache labels and seed), else what differs: the one rule the table and --compare pair by."""
    if not all(isinstance(r.get("per_task_accuracy"), list) and r.get("seed") is not None for r in (a, b)):
        return "no per-task accuracies of sampled tasks"
    differ = [f"{k} {a.get(k)} vs {b.get(k)}" for k in SAME_TASKS if a.get(k) != b.get(k)]
    if not differ and len(a["per_task_accuracy"]) != len(b["per_task_accuracy"]):
        differ = ["number of per-task accuracies"]
    return ", ".join(differ)


def compare(a_path, b_path) -> dict:
    """The paired difference a - b of two result files on the same tasks, with its 95% interval."""
    a, b = (_object(p, load_json(p)) for p in (a_path, b_path))
    mismatch = task_mismatch(a, b)
    if mismatch:
        raise UserError(f"{a_path} and {b_path} are not on the same tasks ({mismatch})")
    diff, ci = paired_difference(a["per_task_accuracy"], b["per_task_accuracy"])
    return {"a": str(a_path), "b": str(b_path), "difference": diff, "ci95": ci, "a_accuracy": a["accuracy"],
            "b_accuracy": b["accuracy"], **{k: a.get(k) for k in SAME_TASKS}}


LEARNERS = {"ep": "EP", "protonet": "ProtoNets"}  # config.json's "learner" -> the table's name (else MAML's)


def _semi(semi: tuple) -> str:
    """The semi-supervised episodes of a result as words: ", 5 unlabelled per way + 3 distractor classes"."""
    unlabeled, distractors = semi
    return (f", {unlabeled} unlabelled per way" if unlabeled else "") + \
        (f" + {distractors} distractor classes" if distractors else "")


def _method(cfg: dict, variant: str, semi: tuple) -> str:
    semi = _semi(semi)
    if "method" in cfg:  # fewshot.baseline
        return cfg["method"] + semi
    learner = LEARNERS.get(cfg.get("learner")) or ("MAML + PEM" if cfg.get("pem") else "MAML (PEM off)")
    if cfg.get("supervised"):
        return f"{learner.split(' ')[0]}, true labels (supervised)" + semi
    return learner + (f", {variant}" if variant else "") + semi


def _epochs(cfg: dict):
    """Training epochs as the table shows them: MAML's and ProtoNets', or EP's pre-training + fine-tuning."""
    if cfg.get("learner") == "ep":
        return f"{cfg.get('pretrain_epochs')}+{cfg.get('finetune_epochs')}"
    return cfg.get("epochs")


RUN_PREFIXES = ("maml", "ep", "protonet", "pixels", "embedding")  # folders tabled: learners', then baselines'


def summarise(root: Path) -> list:
    """One row per run folder of `root` (maml*/, ep*/, protonet*/, pixels*/, embedding*/), split (val, test) and
    number of unlabelled images with results."""
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
    for run in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(RUN_PREFIXES)):
        if not (run / "config.json").is_file():
            continue
        cfg = _object(run / "config.json", load_json(run / "config.json"))
        results = _results(run)
        trained = "method" not in cfg
        for split, semi in sorted({k[:2] for k in results}, key=lambda k: (("val", "test").index(k[0]), k[1])):
            row = {"run": str(run), "method": _method(cfg, variant, semi), "split": split, "semi": semi,
                   "epochs": _epochs(cfg) if trained else None,
                   "ari": ari if trained else None, "nmi": nmi if trained else None,
                   "seconds": {"cfe": _epoch_seconds(root / "cfe") if trained else None,
                               "encode": _number(enc, "seconds", encode_json) if trained else None,
                               "train": _epoch_seconds(run) if trained else None}}
            test_seconds = 0
            for (s, u, key), r in results.items():
                if (s, u) == (split, semi):
                    row[key] = {k: r.get(k) for k in ("accuracy", "ci95", "steps", "per_task_accuracy",
                                                      *SAME_TASKS)}
                    test_seconds += r.get("seconds") or 0
            row["seconds"]["test"] = round(test_seconds)
            rows.append(row)
    if not rows:
        raise UserError(f"{root}: no run folders with results (maml*/results, ep*/results, protonet*/results, "
                        "pixels/results, embedding*/results)")
    return rows


def paired_rows(rows) -> list:
    """(run, baseline run, key, difference, ci) for each trained run against the raw-pixel baseline on the same
    tasks."""
    out = []
    for base in (r for r in rows if Path(r["run"]).name == "pixels"):
        for r in (r for r in rows if r is not base and r["split"] == base["split"]):
            for key in ("5w1s", "5w5s"):
                a, b = r.get(key), base.get(key)
                if a and b and not task_mismatch(a, b):
                    out.append((r, base, key, *paired_difference(a["per_task_accuracy"], b["per_task_accuracy"])))
    return out


def to_markdown(rows) -> str:
    def acc(r, key):
        if key not in r:
            return "-"
        t = r[key]
        steps = f", {t['steps']} steps" if t.get("steps") else ""
        return f"{format_accuracy(t['accuracy'], t['ci95'])} ({t['tasks']} tasks{steps})"

    def num(x):
        return "-" if x is None else f"{x:.3f}"

    lines = ["| run | method | split | epochs | 5-way 1-shot | 5-way 5-shot | ARI | NMI "
             "| CFE min | encode min | train min | test min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["seconds"]
        times = " | ".join(_minutes(s[k]) for k in ("cfe", "encode", "train", "test"))
        lines.append(f"| {Path(r['run']).name} | {r['method']} | {r['split']} | {r['epochs'] or '-'} "
                     f"| {acc(r, '5w1s')} | {acc(r, '5w5s')} | {num(r['ari'])} | {num(r['nmi'])} | {times} |")
    paired = paired_rows(rows)
    if paired:
        lines += ["", "Paired on the same tasks (difference of accuracy):", ""]
        for r, base, key, diff, ci in paired:
            ways, shots = re.fullmatch(r"(\d+)w(\d+)s", key).groups()
            semi = f" ({_semi(r['semi'])[2:]})" if any(r["semi"]) else ""  # which of a run's rows
            lines.append(f"- {Path(r['run']).name}{semi} - {Path(base['run']).name}, {r['split']} {ways}-way "
                         f"{shots}-shot: {format_accuracy(diff, ci, signed=True)}")
    return "\n".join(lines) + "\n"


def get_parser():
    p = make_parser("python -m fewshot.report", __doc__)
    p.add_argument("root", nargs="?", help="pipeline folder holding cfe/, caches/, maml-*/, ep-*/, protonet-*/ and "
                                           "optionally the baselines' pixels/ and embedding/; or a folder of such "
                                           "pipeline folders (the comparison table)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="print the paired difference A - B of two result files on the same tasks instead")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.compare:
        c = compare(*args.compare)
        print(f"{c['split']} {c['ways']}-way {c['shots']}-shot, {c['tasks']} tasks: "
              f"{100 * c['a_accuracy']:.2f} - {100 * c['b_accuracy']:.2f} % = "
              f"{format_accuracy(c['difference'], c['ci95'], signed=True)} (paired)")
        return
    if not args.root:
        raise UserError("give a pipeline folder, or --compare A B")
    root = Path(args.root)
    from fewshot import table  # it builds on this module's readers

    if table.is_collection(root):
        doc = table.comparison(root)
        text, brief = table.to_markdown(doc), doc
    else:
        rows = summarise(root)
        text = to_markdown(rows)
        brief = [{k: ({**v, "per_task_accuracy": None} if isinstance(v, dict) and "per_task_accuracy" in v else v)
                  for k, v in r.items()} for r in rows]  # the per-task lists stay in each run's results
    save_json(root / "summary.json", brief)
    with atomic_path(root / "summary.md") as tmp:
        tmp.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    cli_main(main)
