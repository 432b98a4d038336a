#!/usr/bin/env bash
# PL-CFE on tieredImageNet (84x84 RGB, Ren et al.'s 351/97/160 classes): the chain of scripts/omniglot.sh with
# ImageNet-style networks, tested 5-way 1/5/20/50-shot.
#
#   TIERED_SOURCE=/path/to/tieredimagenet bash scripts/tieredimagenet.sh            # PRESET=quick
#
# The embedding learns from the train split's images only. Every variable of scripts/lib/chain.sh can be set
# from the environment.
set -euo pipefail
{
TIERED_SOURCE=${TIERED_SOURCE:-}  # {train,val,test}_images_png.pkl and {train,val,test}_labels.pkl
DATASET=tieredimagenet SOURCE=$TIERED_SOURCE
source "$(dirname "$0")/lib/imagenet_defaults.sh"
source "$(dirname "$0")/lib/chain.sh"
exit
}
