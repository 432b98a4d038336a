"""Meta-test a MAML run: mean accuracy and 95% CI over N-way K-shot tasks of its test (or val) split.

    python -m maml.test --run runs/omniglot/maml --shots 1
    python -m maml.test --run runs/omniglot/maml --shots 1 --split val     # every setting is chosen on val
    python -m maml.test --run runs/omniglot/maml --shots 5 --save-episodes episodes_5shot.json
    python -m maml.test --run runs/omniglot/maml --episodes episodes_5shot.json

Reads the training run's config.json (architecture, inner step size, its test and val caches) and its best
checkpoint. Writes results/{split}_{ways}w{shots}s.json into the run folder (or --output) and prints the result;
tasks from another cache (split "other" unless --split names it) or an episodes file, and other checkpoints
(`--checkpoint last`, a snapshot epoch_NNNN.pt, or `best@N`: the model the run would have selected had it
meta-trained N epochs), add their names (results/{split}_{ways}w{shots}s_{cache}_{checkpoint}.json), so they
never replace the run's own result.
An existing result file is replaced only by a test with the same settings (caches with one file name share a
result name: pass --output for the other). With --episodes, ways and shots are the file's, and a file saved with
--save-episodes must be evaluated on the split it was drawn from. A test cache that is the run's train cache, or
shares classes (true labels) with it, is refused unless --allow-seen-classes.
A killed test resumes: the accuracies of the tasks done so far are kept in {output}.partial.json, and the same
command continues after the last of them (the tasks are drawn deterministically, so the result is the same).
"""

import torch

from fewshot.cli import DEVICE_HELP, THREADS_HELP, make_parser, nonneg_int, positive_float, positive_int
from fewshot.errors import cli_main
from fewshot.evaluation import add_task_options, open_test_run, run_test, save_result, task_tensors, test_tasks
from maml.maml import evaluate_task
from maml.selection import build_model, checked_arch, pick_checkpoint


def get_parser():
    p = make_parser("python -m maml.test", __doc__)
    p.add_argument("--run", required=True, help="maml.train run folder (holds config.json and checkpoints/)")
    p.add_argument("--checkpoint", default="best",
                   help="best (the run's selection), last, a checkpoint path such as RUN/checkpoints/epoch_0040.pt, "
                        "or best@N: the snapshot a run of N epochs would have selected (runs trained with "
                        "--save-every 1)")
    add_task_options(p)
    p.add_argument("--steps", type=positive_int, default=50, help="adaptation steps")
    p.add_argument("--inner-lr", type=positive_float, help="adaptation step size (default: the training run's)")
    p.add_argument("--output", help="results JSON (default: RUN/results/{split}_{ways}w{shots}s.json, with _NAME "
                                    "added for another --cache or --episodes file NAME.json and for a checkpoint "
                                    "other than best)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    prov, device, run, cfg = open_test_run(args)  # a MAML run's config.json names no learner
    ckpt, ckpt_path, tag, selection = pick_checkpoint(run, cfg, args.checkpoint)
    arch = checked_arch(ckpt, ckpt_path)
    want = (arch["image_size"], arch["image_size"], arch["in_channels"])
    inner_lr = args.inner_lr if args.inner_lr is not None else cfg["inner_lr"]
    method = {"checkpoint": str(ckpt_path), "steps": args.steps, "inner_lr": inner_lr}
    t = test_tasks(args, run, cfg, want, cfg["queries"], tag, method)
    model, head = build_model(ckpt, arch, t.settings["ways"], ckpt_path, device)  # weights that fail, fail now

    X = torch.from_numpy(t.X)
    model.eval()  # no-op for the batch-statistics network, kept for models that care
    result = run_test(t, lambda tasks: [evaluate_task(model, *task_tensors(X, tasks[0], device), args.steps,
                                                      inner_lr)[0]], ckpt_path)
    result.update(head=head, checkpoint_epoch=ckpt["epoch"], model_selection=selection, **prov)
    new_head = f"; head {head}" if t.settings["ways"] != arch["n_way"] else ""
    save_result(t, result, f"{args.steps} steps; {selection}, epoch {ckpt['epoch']}{new_head}")


if __name__ == "__main__":
    cli_main(main)
