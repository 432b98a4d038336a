"""argparse pieces the command lines share."""

THREADS_HELP = "CPU threads (0: all cores, or OMP_NUM_THREADS when it is set)"


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (argparse turns the ValueError into a one-line usage error)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def nonneg_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value
