#!/usr/bin/env bash
# PL-CFE on CIFAR-10 (32x32 RGB): the embedding and the meta-learner learn from the unlabelled images of five
# classes (airplane, automobile, bird, cat, deer), and 5-way tasks test them on the other five (dog, frog, horse,
# ship, truck), all 6,000 images of each. Ten classes leave none for a val split: no setting is chosen on CIFAR-10;
# every one is the stages' default (conv4, as for Omniglot). Runs on a laptop CPU.
#
#   CIFAR10_SOURCE=../shared/data/cifar10/cifar10-jpeg.tar.gz bash scripts/cifar10.sh
#
# Every variable of scripts/lib/chain.sh can be set from the environment.
set -euo pipefail
{
CIFAR10_SOURCE=${CIFAR10_SOURCE:-}  # cifar10-jpeg.tar.gz or the folder it unpacks to ({train,test}/<class>/*.jpg)
DATASET=cifar10 SOURCE=$CIFAR10_SOURCE
source "$(dirname "$0")/lib/chain.sh"
exit
}
