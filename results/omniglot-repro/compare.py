"""Compare two checkpoints of the same stage tensor by tensor: exit 0 when every tensor is bit-identical.

    python results/omniglot-repro/compare.py A.pt B.pt
"""

import sys

import torch


def tensors(obj, prefix=""):
    """Every tensor of a (nested) state dict, by its path."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}/{k}")


def main(a_path, b_path):
    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (a_path, b_path))
    parts = [p for p in ("model", "eval_model", "optimizer") if p in a or p in b]
    same = a["kind"] == b["kind"] and a["epoch"] == b["epoch"] and a.get("best_acc") == b.get("best_acc")
    print(f"{a_path} vs {b_path}: {a['kind']} epoch {a['epoch']} vs {b['kind']} epoch {b['epoch']}"
          + (f", best val accuracy {a['best_acc']} vs {b['best_acc']}" if 'best_acc' in a else ""))
    for part in parts:
        ta, tb = dict(tensors(a.get(part))), dict(tensors(b.get(part)))
        differ = [k for k in ta.keys() | tb.keys() if k not in ta or k not in tb or not torch.equal(ta[k], tb[k])]
        print(f"  {part}: {len(ta)} tensors, {len(differ)} differ" + (f" ({', '.join(sorted(differ)[:3])} ...)"
                                                                       if differ else ""))
        same = same and not differ
    print("  bit-identical" if same else "  DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
