"""creat_env.sh and scripts/env.sh: the .venv is made, completed after an interruption, and marked ready only once
its install succeeded."""

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# creat_env.sh and scripts/env.sh, copied into a temporary folder and run with stand-ins for python3 (which makes
# .venv/bin/python) and the venv's python (which records its arguments and fails when they contain $FAIL_ON), so
# no package is installed.
FAKE_VENV_PYTHON = """#!/usr/bin/env bash
args="$*"
echo "${args//$'\\n'/ }" >> "$CALLS"  # one line per call
case "$*" in *"$FAIL_ON"*) [ -z "$FAIL_ON" ] ;; esac
"""


def env_copy(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "creat_env.sh", tmp_path)
    shutil.copy(ROOT / "scripts" / "env.sh", tmp_path / "scripts")
    (tmp_path / "bin").mkdir()
    (tmp_path / "venv-python").write_text(FAKE_VENV_PYTHON)
    (tmp_path / "bin" / "python3").write_text(f"""#!/usr/bin/env bash
echo "python3 $*" >> "$CALLS"
mkdir -p .venv/bin && cp {tmp_path / "venv-python"} .venv/bin/python && chmod +x .venv/bin/python
""")
    (tmp_path / "bin" / "python3").chmod(0o755)
    return tmp_path


def half_made_venv(root):
    """What `python -m venv` leaves when pip is then interrupted: .venv/bin/python, no marker."""
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(root / "venv-python", root / ".venv" / "bin" / "python")
    (root / ".venv" / "bin" / "python").chmod(0o755)


def run_env(root, command, fail_on=""):
    """Run `command` in root with the stand-ins; returns (exit code, output, [calls to the stand-ins])."""
    calls = root / "calls.txt"
    calls.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "ENV")}
    env.update(PATH=f"{root / 'bin'}:{env['PATH']}", CALLS=str(calls), FAIL_ON=fail_on)
    r = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr, calls.read_text().splitlines() if calls.exists() else []


SOURCE_ENV = 'set -euo pipefail; source scripts/env.sh; echo "PYTHON=$PYTHON"'


def pip_installs(calls):
    return [c for c in calls if c.startswith("-m pip install")]


def test_env_sh_creates_a_missing_venv(tmp_path):
    root = env_copy(tmp_path)
    rc, out, calls = run_env(root, SOURCE_ENV)
    assert rc == 0, out
    assert calls[0] == "python3 -m venv .venv" and len(pip_installs(calls)) == 3
    assert "PYTHON=.venv/bin/python" in out and (root / ".venv" / ".installed").is_file()


def test_env_sh_completes_an_interrupted_install(tmp_path):
    root = env_copy(tmp_path)
    half_made_venv(root)
    rc, out, calls = run_env(root, SOURCE_ENV, fail_on="import")  # packages missing: the import check fails
    assert rc == 0, out
    assert "incomplete" in out and len(pip_installs(calls)) == 3 and "python3 -m venv .venv" not in calls
    assert (root / ".venv" / ".installed").is_file()
    rc, out, calls = run_env(root, SOURCE_ENV, fail_on="import")
    assert rc == 0 and calls == [] and "PYTHON=.venv/bin/python" in out  # the marker: nothing is checked again


def test_env_sh_accepts_a_complete_venv_made_before_the_marker(tmp_path):
    root = env_copy(tmp_path)
    half_made_venv(root)  # its python imports everything: a finished install from before the marker
    rc, out, calls = run_env(root, SOURCE_ENV)
    assert rc == 0, out
    assert len(calls) == 1 and calls[0].startswith("-c import torch") and pip_installs(calls) == []
    assert (root / ".venv" / ".installed").is_file()


def test_env_sh_stops_when_the_install_fails(tmp_path):
    root = env_copy(tmp_path)
    rc, out, calls = run_env(root, SOURCE_ENV, fail_on="install -r")
    assert rc != 0 and "PYTHON=" not in out
    assert not (root / ".venv" / ".installed").exists()


def test_creat_env_removes_the_marker_first_and_writes_it_last(tmp_path):
    root = env_copy(tmp_path)
    half_made_venv(root)
    (root / ".venv" / ".installed").touch()  # an earlier install; this one fails at its last step
    rc, out, calls = run_env(root, "bash creat_env.sh", fail_on="-e .")
    assert rc != 0 and len(pip_installs(calls)) == 3
    assert not (root / ".venv" / ".installed").exists()
    rc, out, calls = run_env(root, "bash creat_env.sh")  # run again on the same .venv: it completes
    assert rc == 0, out
    assert "python3 -m venv .venv" not in calls and (root / ".venv" / ".installed").is_file()


def test_creat_env_makes_a_venv_cut_short_before_pip_again(tmp_path):
    root = env_copy(tmp_path)
    half_made_venv(root)
    rc, out, calls = run_env(root, "bash creat_env.sh", fail_on="pip --version")  # no pip in the .venv yet
    assert rc == 0, out
    assert "python3 -m venv .venv" in calls and (root / ".venv" / ".installed").is_file()
