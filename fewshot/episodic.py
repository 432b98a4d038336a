"""What the episodic embedding learners (ep, protonet) share beyond the meta-test protocol (fewshot.evaluation):
their trainers' common options, optimiser step and end of an epoch, and their test command, each learner giving
its network and how it classifies a task's queries."""

from pathlib import Path

import torch

from fewshot.backbones import BACKBONES
from fewshot.caches import add_cache_options
from fewshot.checkpoint import load_checkpoint, load_state, save_epoch
from fewshot.cli import DEVICE_HELP, THREADS_HELP, make_parser, nonneg_int, positive_int, seed_int
from fewshot.errors import UserError
from fewshot.evaluation import add_task_options, open_test_run, run_test, save_result, test_tasks
from fewshot.io import provenance

TEST_QUERIES = 5  # maml.train's default, so that the learners' tests draw the same tasks


def add_trainer_options(p, backbone_help: str) -> None:
    """A trainer's first options: its caches, run folder and network."""
    add_cache_options(p, centres=False)
    p.add_argument("--out", required=True, help="run folder")
    net = p.add_argument_group("network")
    net.add_argument("--backbone", choices=BACKBONES, default="conv4", help=backbone_help)
    net.add_argument("--hidden", type=positive_int, default=64, help="conv4's channels")


def add_run_options(group, seed_help: str) -> None:
    """A trainer's last options, the end of its 'optimiser, validation, checkpoints and runtime' group: val tasks,
    seed, checkpoints and runtime."""
    group.add_argument("--val-tasks", type=positive_int, default=600, help="val tasks per epoch (fixed set)")
    group.add_argument("--seed", type=seed_int, default=0, help=seed_help)
    group.add_argument("--save-every", type=nonneg_int, default=20, help="keep a snapshot every N epochs (0: none)")
    group.add_argument("--resume", action="store_true", help="continue from --out/checkpoints/last.pt if present")
    group.add_argument("--device", default="auto", help=DEVICE_HELP)
    group.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)


def optimiser_step(optimizer, loss, epoch: int) -> None:
    """One step down `loss`. A non-finite loss stops the run before it reaches the weights: last.pt, written after
    every epoch, still holds the model of the epoch before."""
    if not torch.isfinite(loss):
        raise UserError(f"non-finite loss at epoch {epoch + 1}; the last good checkpoint is checkpoints/last.pt")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def end_epoch(args, learner: str, label: str, epoch: int, total: int, row: dict, best_acc: float, log,
              state: dict) -> float:
    """Log and print the `row` of an epoch (of `label`: "ep pretrain"), and save its checkpoints of `state`
    (weights, optimiser, config, ...), best.pt when its val accuracy, or without val tasks the epoch itself, is the
    best yet. Returns the best score after it."""
    score = row.get("val_acc", float(epoch))  # without val: the latest epoch
    improved, best_acc = score >= best_acc, max(best_acc, score)
    log.write(**row)
    val = "val_acc" in row  # the run has val tasks
    print(f"{label} epoch {epoch + 1}/{total} loss {row['loss']:.4f} train acc {row['train_acc']:.3f}"
          + (f" val acc {row['val_acc']:.4f}" if val else "") + f" ({row['seconds']:.0f}s)")
    state = dict(state, best_acc=best_acc, provenance=provenance(),
                 selection="best val accuracy" if val else "last epoch (no val split)")
    save_epoch(Path(args.out), learner, epoch + 1, args.save_every, improved, state)
    return best_acc


def meta_test_parser(learner: str, doc: str, batch_help: str):
    """The command line of `learner`.test: its run and checkpoint, maml.test's task options, the result file, how
    many tasks are evaluated together (--batch, `batch_help`), device and threads."""
    p = make_parser(f"python -m {learner}.test", doc)
    p.add_argument("--run", required=True, help=f"{learner}.train run folder (holds config.json and checkpoints/)")
    p.add_argument("--checkpoint", default="best",
                   help="best (the run's selection on val), last, or a checkpoint path such as "
                        "RUN/checkpoints/epoch_0020.pt")
    add_task_options(p, queries_help=f"query images per way (default: {TEST_QUERIES}, as maml.test's)")
    p.add_argument("--output", help="results JSON (default: RUN/results/{split}_{ways}w{shots}s.json, with "
                                    "_{N}u[{D}d] for unlabelled images, _NAME for another --cache or --episodes "
                                    "file NAME.json and for a checkpoint other than best)")
    p.add_argument("--batch", type=positive_int, default=1, help=batch_help)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    return p


def load_model(run: Path, name: str, learner: str, net, arch_keys: set, arch_name: str, device) -> tuple:
    """(model, checkpoint dict, path, tag for the result's name: None for the run's selection) of --checkpoint
    `name`: a `learner` checkpoint whose 'arch' entry holds the arguments of `net` (`arch_keys`, `arch_name` in
    errors: "an EP architecture")."""
    path = run / "checkpoints" / f"{name}.pt" if name in ("best", "last") else Path(name)
    ckpt = load_checkpoint(path, learner, required=("model", "arch", "epoch"))
    if not isinstance(ckpt["arch"], dict) or set(ckpt["arch"]) != arch_keys:
        raise UserError(f"{path}: its 'arch' entry is not {arch_name} (expected {sorted(arch_keys)})")
    model = net(**ckpt["arch"]).to(device)
    load_state(model, ckpt["model"], path)
    return model, ckpt, path, None if name == "best" else path


def meta_test(args, learner: str, net, arch_keys: set, arch_name: str, evaluate_tasks, how: str, other_tests: str,
              note: str = "") -> None:
    """`learner`.test's main once its arguments are parsed: the model of a `learner`.train run (see load_model) is
    scored on the test's tasks by `evaluate_tasks(model, X, tasks, device)` (their accuracies) and the result
    written; `how` it classifies and `note` go into the printed line, `other_tests` into the error for another
    learner's run."""
    prov, device, run, cfg = open_test_run(args, learner, other_tests)
    model, ckpt, path, tag = load_model(run, args.checkpoint, learner, net, arch_keys, arch_name, device)
    arch = ckpt["arch"]
    t = test_tasks(args, run, cfg, (arch["image_size"], arch["image_size"], arch["in_channels"]), TEST_QUERIES, tag,
                   {"checkpoint": str(path)})
    X = torch.from_numpy(t.X)
    model.eval()
    result = run_test(t, lambda tasks: evaluate_tasks(model, X, tasks, device), path, args.batch)
    selection = ckpt.get("selection", "") if tag is None else f"{path.stem} checkpoint, not the run's selection"
    result.update(learner=learner, checkpoint_epoch=ckpt["epoch"], model_selection=selection, **prov)
    save_result(t, result, f"{how}; {selection}, epoch {ckpt['epoch']}{note}")
