#!/usr/bin/env bash
# PL-CFE on Omniglot: prepare data -> CFE -> encode + k-means -> MAML + PEM (or EP) -> meta-test, beside a
# raw-pixel nearest-prototype baseline on the same tasks.
#
#   OMNIGLOT_SOURCE=/path/to/omniglot.tar.xz bash scripts/omniglot.sh                 # PRESET=quick
#   OMNIGLOT_SOURCE=/path/to/omniglot.tar.xz PRESET=paper bash scripts/omniglot.sh    # the paper's budget
#   OMNIGLOT_SOURCE=/path/to/omniglot.tar.xz PEM=0 bash scripts/omniglot.sh           # PEM off, same CFE and caches
#   OMNIGLOT_SOURCE=/path/to/omniglot.tar.xz METALEARNER=ep bash scripts/omniglot.sh  # EP on the same caches
#   OMNIGLOT_SOURCE=/path/to/omniglot.tar.xz SPLIT=val bash scripts/omniglot.sh       # evaluate on val
#
# Settings are compared on val (SPLIT=val); test gives the final number of a setting already chosen. Every
# variable of scripts/lib/chain.sh can be set from the environment (RUN_DIR, SEED, THREADS, CFE_ARGS, ...); the
# presets (scripts/presets/*.env) set the budgets. Rerunning the same command skips finished stages and resumes.
set -euo pipefail
# One { ...; exit; } block: bash reads it whole before running it, so editing this file during a run is safe.
{
OMNIGLOT_SOURCE=${OMNIGLOT_SOURCE:-}  # omniglot.tar.xz, a folder of omniglot_cache_*.npz or of the official zips;
                                      # unset: the official zips are downloaded
DATASET=omniglot SOURCE=$OMNIGLOT_SOURCE
source "$(dirname "$0")/lib/chain.sh"
exit
}
