"""maml.train --meta-lr-schedule: the cosine rate as a pure function, a cosine run that resumes bit for bit, and a
resume that would stretch the schedule refused."""

import math

import pytest

from fewshot.errors import UserError
from maml.train import meta_lr_at
from tests.maml.test_train import assert_same, contents, load, run, toy_caches


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return toy_caches(tmp_path_factory.mktemp("toy"))


def test_constant_is_the_base_rate_and_cosine_decays_from_it_towards_zero():
    assert [meta_lr_at(s, 10, 1e-3, "constant") for s in (0, 5, 9, 10, 99)] == [1e-3] * 5
    rates = [meta_lr_at(s, 10, 1e-3, "cosine") for s in range(10)]
    assert rates[0] == 1e-3
    assert rates[5] == pytest.approx(0.5e-3)
    assert rates[9] == pytest.approx(1e-3 * (1 + math.cos(0.9 * math.pi)) / 2) and rates[9] > 0
    assert all(a > b for a, b in zip(rates, rates[1:]))
    with pytest.raises(AssertionError):
        meta_lr_at(10, 10, 1e-3, "cosine")  # past the run's last meta-batch


def test_a_cosine_run_resumes_bit_for_bit_and_differs_from_a_constant_one(caches, tmp_path):
    run(caches, tmp_path / "constant")
    run(caches, tmp_path / "straight", "--meta-lr-schedule", "cosine")
    out = tmp_path / "resumed"
    run(caches, out, "--meta-lr-schedule", "cosine", "--halt-after", "2")
    run(caches, out, "--meta-lr-schedule", "cosine", "--resume")
    a, b = load(tmp_path / "straight"), load(out)
    for key in ("model", "eval_model", "optimizer", "epoch", "best_acc"):
        assert_same(a[key], b[key], key)
    # the last meta-batch (step 8 of 3 epochs x 3) stepped with the cosine rate, which changed the training
    assert a["optimizer"]["param_groups"][0]["lr"] == meta_lr_at(8, 9, 1e-3, "cosine") < 1e-3
    assert load(tmp_path / "constant")["optimizer"]["param_groups"][0]["lr"] == 1e-3
    constant = load(tmp_path / "constant")["model"]
    assert any(not (v == constant[k]).all() for k, v in a["model"].items())


def test_a_cosine_run_refuses_to_resume_with_other_epochs_and_is_left_as_it_was(caches, tmp_path):
    out = tmp_path / "run"
    run(caches, out, "--meta-lr-schedule", "cosine", "--halt-after", "1")
    before = contents(out)
    with pytest.raises(UserError, match="epochs"):
        run(caches, out, "--meta-lr-schedule", "cosine", "--resume", "--epochs", "5")
    assert contents(out) == before
    run(caches, tmp_path / "constant", "--halt-after", "1")  # a constant-rate run may grow its budget
    run(caches, tmp_path / "constant", "--resume", "--epochs", "4")
    assert load(tmp_path / "constant")["epoch"] == 4
