"""One error type for bad input, and the wrapper that turns it into one line and a non-zero exit.

Code that validates user input raises `UserError` with a message a researcher can act on. Entry points run
through `cli_main`, which prints `error: <message>` and exits with status 2. Anything else is a bug and keeps
its traceback on purpose.
"""

import os
import sys
from pathlib import Path


class UserError(Exception):
    """Bad input: missing or corrupt files, wrong shapes, impossible settings."""


def require_file(path, what: str = "file") -> Path:
    """`path` as a Path if it is a file; else a UserError that says whether it is missing or a folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a {what}")
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    return path


def refuse_multiprocess() -> None:
    """A stage that does not scale out runs in one process: under `torchrun --nproc_per_node N` each of the N copies
    would write the same run folder and race on its files, so refuse instead of running them."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.strip() not in ("", "1"):
        raise UserError(f"WORLD_SIZE={world}: this command runs in one process; start it without torchrun "
                        "(or with --nproc_per_node 1)")


def cli_main(main, argv=None, resumable=False, distributed=False) -> None:
    """Run a command's main(); `resumable`: it has --resume, which an interrupted run should be rerun with;
    `distributed`: it runs under torchrun (fewshot.distributed), else a multi-process launch is refused."""
    try:
        if not distributed:
            refuse_multiprocess()
        main(argv)
        if distributed:  # every rank done before any tears its connections down: a gloo rank finishing while its
            from fewshot.distributed import barrier  # peer was already closing once aborted ("terminate called
                                                     # without an active exception") in a 2-process test
            barrier()
    except UserError as e:
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())  # one line, always
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        hint = "rerun the same command with --resume to continue" if resumable else "rerun the same command"
        print(f"interrupted: {hint}", file=sys.stderr)
        sys.exit(130)
    finally:
        if distributed:
            from fewshot.distributed import shutdown  # here: fewshot.distributed imports this module

            shutdown()
