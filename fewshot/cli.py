"""argparse pieces the command lines share."""

import argparse
import math

DEVICE_HELP = "auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:1, ..."
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


SEED_MAX = 2**31 - 1  # faiss k-means takes a signed 32-bit seed; every stage's --seed shares its range


def seed_int(text: str) -> int:
    """argparse type: a seed from 0 to 2**31 - 1. Outside it numpy (negative) or faiss (over 2**31 - 1) raise
    deep inside a stage, after its run folder exists."""
    value = int(text)
    if not 0 <= value <= SEED_MAX:
        raise ValueError(text)
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # float() accepts "nan" and "inf"; no rate or fraction may be either
        raise ValueError(text)
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a step size or learning rate)."""
    value = _finite(text)
    if value <= 0:
        raise ValueError(text)
    return value


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a momentum or a weight decay)."""
    value = _finite(text)
    if value < 0:
        raise ValueError(text)
    return value


def fraction(text: str) -> float:
    """argparse type: a finite number in (0, 1], a share of something that must keep at least a part."""
    value = _finite(text)
    if not 0 < value <= 1:
        raise ValueError(text)
    return value


def unit_float(text: str) -> float:
    """argparse type: a finite number in [0, 1] (a probability)."""
    value = _finite(text)
    if not 0 <= value <= 1:
        raise ValueError(text)
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help, except where there is nothing to show (no default), where it
    would mislead (a flag: "--no-mlp (default: True)") or where the help already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or action.nargs == 0 or "default" in text:
            return text
        return super()._get_help_string(action)


def make_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A stage's parser: its docstring's first line as the description, defaults in --help, and no abbreviated
    options (an option renamed or removed must not be read as another that shares its prefix)."""
    return argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0], formatter_class=HelpFormatter,
                                   allow_abbrev=False)
