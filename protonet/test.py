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

from fewshot.episodic import meta_test, meta_test_parser
from fewshot.errors import cli_main
from protonet.loop import evaluate_tasks
from protonet.model import ProtoNet

ARCH_KEYS = {"backbone", "in_channels", "hidden", "image_size"}  # ProtoNet's arguments


def get_parser():
    return meta_test_parser("protonet", __doc__, "tasks evaluated together")


def main(argv=None):
    args = get_parser().parse_args(argv)
    meta_test(args, "protonet", ProtoNet, ARCH_KEYS, "a ProtoNet architecture", evaluate_tasks, "nearest prototype",
              other_tests="test MAML runs with maml.test, EP runs with ep.test",
              note="; unlabelled images ignored" if args.unlabeled else "")


if __name__ == "__main__":
    cli_main(main)
