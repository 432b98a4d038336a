#!/usr/bin/env bash
# PL-CFE on miniImageNet (84x84 RGB, Ravi & Larochelle's 64/16/20 classes): the chain of scripts/omniglot.sh with
# ImageNet-style networks, tested 5-way 1/5/20/50-shot as upstream reports it.
#
#   MINI_SOURCE=/path/to/miniimagenet bash scripts/miniimagenet.sh                  # PRESET=quick
#   MINI_SOURCE=/path/to/miniimagenet PRESET=paper METALEARNER=ep bash scripts/miniimagenet.sh
#
# The embedding learns from the train split's images only, so no val or test class reaches it (upstream's
# ImageNet embedding saw them all). Every variable of scripts/lib/chain.sh can be set from the environment.
set -euo pipefail
{
MINI_SOURCE=${MINI_SOURCE:-}  # mini-imagenet-cache-{train,val,test}.pkl, or images/ + {train,val,test}.csv
DATASET=miniimagenet SOURCE=$MINI_SOURCE
source "$(dirname "$0")/lib/imagenet_defaults.sh"
source "$(dirname "$0")/lib/chain.sh"
exit
}
