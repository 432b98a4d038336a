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

from ep.loop import evaluate_tasks
from ep.model import EPNet
from fewshot.episodic import meta_test, meta_test_parser
from fewshot.errors import cli_main

ARCH_KEYS = {"backbone", "in_channels", "hidden", "image_size", "classes"}  # EPNet's arguments


def get_parser():
    return meta_test_parser("ep", __doc__,
                            "tasks evaluated together (on a CPU one at a time is fastest: BENCHMARKS.md)")


def main(argv=None):
    args = get_parser().parse_args(argv)
    meta_test(args, "ep", EPNet, ARCH_KEYS, "an EP architecture", evaluate_tasks, "label propagation",
              other_tests="test MAML runs with maml.test")


if __name__ == "__main__":
    cli_main(main)
