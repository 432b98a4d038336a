"""Compare two checkpoints of one stage tensor by tensor: exit 0 when every tensor is bit-identical, 1 when any
differs, 2 (one line) when a file is missing, unreadable or of another stage.

    python results/omniglot-repro/compare.py {cfe,maml} A.pt B.pt
"""

import argparse
import sys

import torch

from fewshot.checkpoint import load_checkpoint
from fewshot.errors import cli_main


def tensors(obj, prefix=""):
    """Every tensor of a (nested) state dict, by its path."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}/{k}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=("cfe", "maml"), help="the stage that wrote both checkpoints")
    p.add_argument("a")
    p.add_argument("b")
    args = p.parse_args(argv)
    a, b = (load_checkpoint(path, args.kind, required=("model", "epoch")) for path in (args.a, args.b))
    same = a["epoch"] == b["epoch"] and a.get("best_acc") == b.get("best_acc")
    print(f"{args.a} vs {args.b}: {args.kind} epoch {a['epoch']} vs {b['epoch']}"
          + (f", best val accuracy {a['best_acc']} vs {b['best_acc']}" if "best_acc" in a else ""))
    for part in ("model", "eval_model", "optimizer"):
        if part not in a and part not in b:
            continue
        ta, tb = dict(tensors(a.get(part))), dict(tensors(b.get(part)))
        differ = sorted(k for k in ta.keys() | tb.keys() if k not in ta or k not in tb or not torch.equal(ta[k], tb[k]))
        shown = f" ({', '.join(differ[:3])} ...)" if differ else ""
        print(f"  {part}: {len(ta)} tensors, {len(differ)} differ{shown}")
        same = same and not differ
    print("  bit-identical" if same else "  DIFFERENT")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    cli_main(main)
