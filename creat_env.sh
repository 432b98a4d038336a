#!/usr/bin/env bash
# Create the environment and install PL-CFE into it (the file name upstream PL-CFE users know).
#   bash creat_env.sh            # a virtualenv in .venv (default)
#   ENV=conda bash creat_env.sh  # a conda environment named pl-cfe instead
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ "${ENV:-venv}" = conda ]; then
  command -v conda >/dev/null || { echo "error: conda not found; run without ENV=conda for a virtualenv" >&2; exit 1; }
  conda create -y -n pl-cfe python=3.11
  conda run -n pl-cfe pip install -r requirements.txt
  conda run -n pl-cfe pip install --no-deps -e .
  echo "done: conda activate pl-cfe"
else
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -r requirements.txt
  .venv/bin/pip install --no-deps -e .
  echo "done: source .venv/bin/activate"
fi
