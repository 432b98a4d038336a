#!/usr/bin/env bash
# PL-CFE on your own images: IMAGES/<split>/<class>/*.{png,jpg,jpeg} (splits train, test and, for choosing
# settings, val), or IMAGES/<class>/* split by class with seed 0 (written to DATA_DIR/class_split.json). Images
# become 84x84 RGB; the chain is that of scripts/omniglot.sh with ImageNet-style networks.
#
#   IMAGES=/path/to/images bash scripts/imagefolder.sh
#   IMAGES=/path/to/images DATA_DIR=data/birds RUN_DIR=runs/birds TEST_SHOTS="1 5" bash scripts/imagefolder.sh
#
# The train split leaves out the val and test classes of mini- and tieredImageNet (WordNet ids) by default, so an
# embedding trained on ImageNet images can be tested on those benchmarks: PREPARE_ARGS="--exclude-classes none"
# keeps every class. Every variable of scripts/lib/chain.sh can be set from the environment.
set -euo pipefail
{
IMAGES=${IMAGES:-}  # the image folder
DATASET=imagefolder SOURCE=$IMAGES
source "$(dirname "$0")/lib/imagenet_defaults.sh"
source "$(dirname "$0")/lib/chain.sh"
exit
}
