"""Every command line's --help: each option says what it is for, and shows its default once (none for options
without one)."""

import argparse
import importlib

import pytest

from fewshot.cli import SEED_MAX, HelpFormatter, fraction, nonneg_float, positive_float, seed_int, unit_float

COMMANDS = ["fewshot.datasets", "cfe.train", "cfe.encode", "cfe.quality", "maml.train", "maml.test", "ep.train",
            "ep.test", "protonet.train", "protonet.test", "fewshot.baseline", "fewshot.report",
            "fewshot.torchmeta_split", "bench.cfe_step", "bench.scaleout"]


def parser_of(module) -> argparse.ArgumentParser:
    """Each command builds its parser in get_parser(), so its options can be read without running it."""
    return importlib.import_module(module).get_parser()


@pytest.mark.parametrize("module", COMMANDS)
def test_every_option_has_help_and_one_default(module):
    parser = parser_of(module)
    assert parser.formatter_class is HelpFormatter, module
    undocumented = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert undocumented == [], f"{module}: options without help: {undocumented}"
    text = parser.format_help()
    assert not any(f"(default: {v})" in text for v in ("None", "False", "True")), text
    for action in parser._actions:
        if action.help != argparse.SUPPRESS:
            shown = HelpFormatter(module)._get_help_string(action).replace("%(default)s", "X")
            assert shown.count("default") <= 1, (action.option_strings, shown)


def test_help_shows_defaults_that_are_set():
    text = " ".join(parser_of("maml.test").format_help().split())  # argparse wraps lines
    assert "tasks to sample (default: 1000)" in text
    assert "adaptation steps (default: 50)" in text


@pytest.mark.parametrize("kind, good, bad", [
    (positive_float, ["1e-3", "0.1", "2"], ["0", "-1", "nan", "inf", "-inf", "x"]),
    (nonneg_float, ["0", "0.9", "1e-4", "3"], ["-1e-9", "nan", "inf", "x"]),
    (fraction, ["1", "0.75", "1e-9"], ["0", "1.5", "2", "-0.1", "nan", "inf"]),
    (unit_float, ["0", "1", "0.9"], ["-0.1", "1.01", "nan", "inf"]),
])
def test_float_types_refuse_what_no_rate_or_share_can_be(kind, good, bad):
    assert [kind(t) for t in good] == [float(t) for t in good]
    for text in bad:
        with pytest.raises(ValueError):
            kind(text)


def test_seeds_outside_what_numpy_and_faiss_take_are_refused():
    assert [seed_int(t) for t in ("0", "7", str(SEED_MAX))] == [0, 7, SEED_MAX]
    for text in ("-1", str(SEED_MAX + 1), str(2**32), "1.5", "x"):
        with pytest.raises(ValueError):
            seed_int(text)


@pytest.mark.parametrize("module", ["cfe.train", "cfe.encode", "maml.train", "maml.test"])
def test_every_stage_takes_its_seed_as_seed_int(module, capsys):
    """maml.train --seed -1 used to write its run folder, then fail inside np.random.seed with a traceback."""
    seed = next(a for a in parser_of(module)._actions if "--seed" in a.option_strings)
    assert seed.type is seed_int
    with pytest.raises(SystemExit) as info:
        parser_of(module).parse_args(["--seed", "-1"])
    assert info.value.code == 2
    assert "argument --seed: invalid seed_int value: '-1'" in capsys.readouterr().err
