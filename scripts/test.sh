#!/usr/bin/env bash
# Run the test suite (creates the environment first if needed). Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"`. Tests on real Omniglot read OMNIGLOT_SOURCE (the upstream
# omniglot.tar.xz) and OMNIGLOT_ZIPS (a folder of the official zips), by default ../shared/data beside the
# repository, and are skipped when the files are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec "$PYTHON" -m pytest "$@"
