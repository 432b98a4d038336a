"""One error type for bad input, and the wrapper that turns it into one line and a non-zero exit.

Code that validates user input raises `UserError` with a message a researcher can act on. Entry points run
through `cli_main`, which prints `error: <message>` and exits with status 2. Anything else is a bug and keeps
its traceback on purpose.
"""

import sys


class UserError(Exception):
    """Bad input: missing or corrupt files, wrong shapes, impossible settings."""


def cli_main(main, argv=None) -> None:
    try:
        main(argv)
    except UserError as e:
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())  # one line, always
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command with --resume to continue", file=sys.stderr)
        sys.exit(130)
