"""Test an EP run: label propagation on N-way K-shot tasks of its test (or val) split, mean accuracy and 95% CI.

    python -m ep.test --run runs/omniglot/ep --shots 1
    python -m ep.test --run runs/omniglot/ep --shots 1 --split val            # every setting is chosen on val
    python -m ep.test --run runs/omniglot/ep --shots 1 --unlabeled 5          # semi-supervised
    python -m ep.test --run runs/omniglot/ep --shots 1 --unlabeled 5 --distractors 3

The tasks are maml.test's for the same split, seed, ways, shots and queries (5 per way by default for both,
NOTE: upstream EP tests with 15, pass --queries 15), so EP and MAML results pair task by task. With --unlabeled N,
N more images of each way (and of --distractors other classes) join the graph unlabelled; the support and query
sets stay those of the plain tasks. Writes results/{split}_{ways}w{shots}s[_{N}u[{D}d]].json into the run
folder (or --output), resumes a killed test, and refuses test classes the run trained on, as maml.test does.
"""

from pathlib import Path

import torch

from ep.loop import evaluate_tasks
from ep.model import EPNet
from fewshot.checkpoint import load_checkpoint, load_state
from fewshot.cli import DEVICE_HELP, THREADS_HELP, make_parser, nonneg_int, positive_int
from fewshot.errors import UserError, cli_main
from fewshot.evaluation import add_task_options, run_test, save_result, test_tasks
from fewshot.io import load_json, provenance
from fewshot.runtime import pick_device, set_threads

ARCH_KEYS = {"backbone", "in_channels", "hidden", "image_size", "classes"}  # EPNet's arguments
TEST_QUERIES = 5  # maml.train's default, so that the two learners' tests draw the same tasks


def get_parser():
    p = make_parser("python -m ep.test", __doc__)
    p.add_argument("--run", required=True, help="ep.train run folder (holds config.json and checkpoints/)")
    p.add_argument("--checkpoint", default="best",
                   help="best (the run's selection on val), last, or a checkpoint path such as "
                        "RUN/checkpoints/epoch_0020.pt")
    add_task_options(p, queries_help=f"query images per way (default: {TEST_QUERIES}, as maml.test's)")
    p.add_argument("--output", help="results JSON (default: RUN/results/{split}_{ways}w{shots}s.json, with "
                                    "_{N}u[{D}d] for unlabelled images, _NAME for another --cache or --episodes "
                                    "file NAME.json and for a checkpoint other than best)")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="tasks evaluated together (on a CPU one at a time is fastest: BENCHMARKS.md)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    return p


def load_model(run: Path, name: str, device) -> tuple:
    """(model, checkpoint dict, path, tag for the result's name: None for the run's selection)."""
    path = run / "checkpoints" / f"{name}.pt" if name in ("best", "last") else Path(name)
    ckpt = load_checkpoint(path, "ep", required=("model", "arch", "epoch"))
    if not isinstance(ckpt["arch"], dict) or set(ckpt["arch"]) != ARCH_KEYS:
        raise UserError(f"{path}: its 'arch' entry is not an EP architecture (expected {sorted(ARCH_KEYS)})")
    model = EPNet(**ckpt["arch"]).to(device)
    load_state(model, ckpt["model"], path)
    return model, ckpt, path, None if name == "best" else path


def main(argv=None):
    args = get_parser().parse_args(argv)
    prov = provenance()  # the code as it starts: a commit made during a long test must not relabel its results
    set_threads(args.threads)
    device = pick_device(args.device)
    run = Path(args.run)
    cfg = load_json(run / "config.json")
    if cfg.get("learner") != "ep":
        raise UserError(f"{run}: not an ep.train run (its config.json has no \"learner\": \"ep\"); "
                        "test MAML runs with maml.test")
    model, ckpt, path, tag = load_model(run, args.checkpoint, device)
    arch = ckpt["arch"]
    t = test_tasks(args, run, cfg, (arch["image_size"], arch["image_size"], arch["in_channels"]), TEST_QUERIES, tag,
                   {"checkpoint": str(path)})
    X = torch.from_numpy(t.X)
    model.eval()
    result = run_test(t, lambda tasks: evaluate_tasks(model, X, tasks, device), path, args.batch)
    selection = ckpt.get("selection", "") if tag is None else f"{path.stem} checkpoint, not the run's selection"
    result.update(learner="ep", checkpoint_epoch=ckpt["epoch"], model_selection=selection, **prov)
    save_result(t, result, f"label propagation; {selection}, epoch {ckpt['epoch']}")


if __name__ == "__main__":
    cli_main(main)
