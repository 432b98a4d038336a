"""Lists of class names, and leaving their classes out of a train split (`fewshot.datasets --exclude-classes`).

Shipped lists (fewshot/class_lists/*.txt, WordNet ids): the val and test classes of miniImageNet (Ravi &
Larochelle's split) and of tieredImageNet (Ren et al.'s split). ImageNet images of those classes must not reach the
embedding or the meta-training that a mini- or tieredImageNet test is meant to judge: upstream trained its ImageNet
embedding on all of ILSVRC-2012, val and test classes included (docs/design.md, "Leakage").
"""

from pathlib import Path

from fewshot.errors import UserError

LISTS_DIR = Path(__file__).parent / "class_lists"
BENCHMARKS = ("miniimagenet", "tieredimagenet")
DEFAULT_EXCLUDE = ",".join(BENCHMARKS)  # an image folder's default: leakage-free for both benchmarks
EXCLUDE_HELP = ("classes left out of the train split, as comma-separated lists: a shipped list (miniimagenet, "
                "tieredimagenet: its val and test classes; or one split, e.g. miniimagenet_test), or a text file "
                "of class names, one per line ('#' starts a comment); 'none' keeps every class. imagefolder only; "
                f"default: {DEFAULT_EXCLUDE}")


def shipped(name: str) -> list:
    """The files of a shipped list: 'miniimagenet' is its val and test files, 'miniimagenet_val' one of them."""
    files = [LISTS_DIR / f"{name}_{s}.txt" for s in ("val", "test")] if name in BENCHMARKS \
        else [LISTS_DIR / f"{name}.txt"]
    return files if all(f.is_file() for f in files) else []


def read_class_list(path: Path) -> list:
    """Class names of a text file, one per line; blank lines and '#' comments are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the class list ({e})") from None
    names = [line.split("#", 1)[0].strip() for line in lines]
    names = [n for n in names if n]
    if not names:
        raise UserError(f"{path}: the class list names no class")
    return names


def resolve_exclusion(spec: str) -> tuple:
    """'none' | 'a,b,...' (shipped list names or files) -> (set of class names, [the lists, as given])."""
    if spec.strip() == "none":
        return set(), []
    lists = [s.strip() for s in spec.split(",") if s.strip()]
    if not lists:
        raise UserError("--exclude-classes is empty; give list names or files, or 'none'")
    names = set()
    for item in lists:
        files = shipped(item) or ([Path(item)] if Path(item).is_file() else [])
        if not files:
            known = sorted({*BENCHMARKS, *(p.stem for p in LISTS_DIR.glob("*.txt"))})
            raise UserError(f"--exclude-classes: '{item}' is neither a shipped list ({', '.join(known)}) nor a file")
        for f in files:
            names.update(read_class_list(f))
    return names, lists


def drop_classes(members: dict, excluded: set, where) -> tuple:
    """{class: images} of the train split -> ({class: images} without the excluded classes, sorted [classes
    dropped]); `where` is what the error names when no class is left."""
    removed = sorted(set(members) & excluded)
    if members and len(removed) == len(members):
        raise UserError(f"{where}: every train class is in the --exclude-classes lists; give other lists or 'none'")
    return {c: v for c, v in members.items() if c not in excluded}, removed
