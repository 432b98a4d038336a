"""Test a ProtoNets run: nearest prototype on N-way K-shot tasks of its test (or val) split, mean accuracy, 95% CI.

    python -m protonet.test --run runs/omniglot/protonet --shots 1
    python -m protonet.test --run runs/omniglot/protonet --shots 1 --split val       # every setting is chosen on val
    python -m protonet.test --run runs/omniglot/protonet --episodes episodes_5shot.json

The tasks are maml.test's and ep.test's for the same split, seed, ways, shots and queries (5 per way by default),
so the three learners' results pair task by task. --unlabeled N and --distractors D are accepted as ep.test accepts
them, so that a semi-supervised row of the table has a ProtoNets entry on the same tasks: like maml.test, ProtoNets
ignores the unlabelled images, and its accuracies are those of the plain tasks. Writes
results/{split}_{ways}w{shots}s[_{N}u[{D}d]].json into the run folder (or --output), resumes a killed test, and
refuses test classes the run trained on, as maml.test does.
"""

from pathlib import Path

import torch

from fewshot.checkpoint import load_checkpoint, load_state
from fewshot.cli import DEVICE_HELP, THREADS_HELP, make_parser, nonneg_int, positive_int
from fewshot.errors import UserError, cli_main
from fewshot.evaluation import add_task_options, run_test, save_result, test_tasks
from fewshot.io import load_json, provenance
from fewshot.runtime import pick_device, set_threads
from protonet.loop import evaluate_tasks
from protonet.model import ProtoNet

ARCH_KEYS = {"backbone", "in_channels", "hidden", "image_size"}  # ProtoNet's arguments
TEST_QUERIES = 5  # maml.train's default, as ep.test's: the learners' tests draw the same tasks


def get_parser():
    p = make_parser("python -m protonet.test", __doc__)
    p.add_argument("--run", required=True, help="protonet.train run folder (holds config.json and checkpoints/)")
    p.add_argument("--checkpoint", default="best",
                   help="best (the run's selection on val), last, or a checkpoint path such as "
                        "RUN/checkpoints/epoch_0020.pt")
    add_task_options(p, queries_help=f"query images per way (default: {TEST_QUERIES}, as maml.test's)")
    p.add_argument("--output", help="results JSON (default: RUN/results/{split}_{ways}w{shots}s.json, with "
                                    "_{N}u[{D}d] for unlabelled images, _NAME for another --cache or --episodes "
                                    "file NAME.json and for a checkpoint other than best)")
    p.add_argument("--batch", type=positive_int, default=1, help="tasks evaluated together")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    return p


def load_model(run: Path, name: str, device) -> tuple:
    """(model, checkpoint dict, path, tag for the result's name: None for the run's selection)."""
    path = run / "checkpoints" / f"{name}.pt" if name in ("best", "last") else Path(name)
    ckpt = load_checkpoint(path, "protonet", required=("model", "arch", "epoch"))
    if not isinstance(ckpt["arch"], dict) or set(ckpt["arch"]) != ARCH_KEYS:
        raise UserError(f"{path}: its 'arch' entry is not a ProtoNet architecture (expected {sorted(ARCH_KEYS)})")
    model = ProtoNet(**ckpt["arch"]).to(device)
    load_state(model, ckpt["model"], path)
    return model, ckpt, path, None if name == "best" else path


def main(argv=None):
    args = get_parser().parse_args(argv)
    prov = provenance()  # the code as it starts: a commit made during a long test must not relabel its results
    set_threads(args.threads)
    device = pick_device(args.device)
    run = Path(args.run)
    cfg = load_json(run / "config.json")
    if not isinstance(cfg, dict) or cfg.get("learner") != "protonet":
        raise UserError(f"{run}: not a protonet.train run (its config.json has no \"learner\": \"protonet\"); "
                        "test MAML runs with maml.test, EP runs with ep.test")
    model, ckpt, path, tag = load_model(run, args.checkpoint, device)
    arch = ckpt["arch"]
    t = test_tasks(args, run, cfg, (arch["image_size"], arch["image_size"], arch["in_channels"]), TEST_QUERIES, tag,
                   {"checkpoint": str(path)})
    X = torch.from_numpy(t.X)
    model.eval()
    result = run_test(t, lambda tasks: evaluate_tasks(model, X, tasks, device), path, args.batch)
    selection = ckpt.get("selection", "") if tag is None else f"{path.stem} checkpoint, not the run's selection"
    result.update(learner="protonet", checkpoint_epoch=ckpt["epoch"], model_selection=selection, **prov)
    ignored = "; unlabelled images ignored" if args.unlabeled else ""
    save_result(t, result, f"nearest prototype; {selection}, epoch {ckpt['epoch']}{ignored}")


if __name__ == "__main__":
    cli_main(main)
