#!/usr/bin/env bash
# Run the test suite (creates the environment first if needed). Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"`. Tests on real Omniglot read OMNIGLOT_SOURCE (the upstream
# omniglot.tar.xz) and are skipped when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec "$PYTHON" -m pytest "$@"
