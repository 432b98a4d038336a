# Sourced by the other scripts: the Python to run (the project's .venv, created on first use).
# Set PYTHON to use another interpreter that has the project installed (e.g. a conda env's python).
if [ -z "${PYTHON:-}" ]; then
  [ -x .venv/bin/python ] || bash creat_env.sh
  PYTHON=.venv/bin/python
fi
