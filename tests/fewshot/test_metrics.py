"""fewshot.metrics: accuracy with its 95% interval, and purity / ARI / NMI on examples computed by hand."""

import json
import math

import numpy as np
import pytest

from fewshot.metrics import CI95_METHOD, cluster_quality, mean_ci95, purity


def test_mean_ci95_by_hand():
    mean, ci = mean_ci95([0.2, 0.4, 0.6, 0.8])
    # mean 0.5; sample variance (0.09 + 0.01 + 0.01 + 0.09) / 3; half-width 1.96 * sd / sqrt(4)
    assert mean == pytest.approx(0.5)
    assert ci == pytest.approx(1.96 * math.sqrt(0.2 / 3) / 2)
    assert ci == pytest.approx(0.25303, abs=1e-5)


def test_mean_ci95_shrinks_with_more_tasks_and_is_zero_for_constant_values():
    rng = np.random.default_rng(0)
    few, many = rng.uniform(size=100), rng.uniform(size=10000)
    assert mean_ci95(many)[1] < mean_ci95(few)[1] / 5
    assert mean_ci95([0.7] * 10) == (pytest.approx(0.7), 0.0)


def test_mean_ci95_of_one_or_no_value_is_none_which_json_writes_as_null():
    """NaN would make a results file invalid strict JSON (json.dumps writes a bare NaN)."""
    mean, ci = mean_ci95([0.3])
    assert mean == 0.3 and ci is None
    assert mean_ci95([]) == (None, None)
    assert json.loads(json.dumps({"ci95": ci}, allow_nan=False)) == {"ci95": None}
    assert "1.96" in CI95_METHOD and "ddof=1" in CI95_METHOD


TRUE = [0, 0, 0, 1, 1, 1]
PRED = [0, 0, 1, 1, 2, 2]  # clusters {0,0}, {0,1}, {1,1}


def test_purity_by_hand():
    assert purity(TRUE, PRED) == pytest.approx(5 / 6)  # majorities 2 + 1 + 2 of 6
    assert purity(TRUE, [5, 5, 5, 9, 9, 9]) == 1.0
    assert purity(TRUE, [0] * 6) == 0.5
    assert purity(["a", "a", "b"], [1, 2, 2]) == pytest.approx(2 / 3)  # any label type


def test_ari_and_nmi_by_hand():
    q = cluster_quality(TRUE, PRED)
    # ARI: sum_ij C(n_ij, 2) = 2, sum_i C(a_i, 2) = 3 (pred sizes 2, 2, 2), sum_j C(b_j, 2) = 6, C(6, 2) = 15
    expected_index = 3 * 6 / 15
    assert q["ari"] == pytest.approx((2 - expected_index) / ((3 + 6) / 2 - expected_index))  # 0.2424
    # NMI (arithmetic mean): MI = 2/3 log 2, H(true) = log 2, H(pred) = log 3
    assert q["nmi"] == pytest.approx((2 / 3 * math.log(2)) / ((math.log(2) + math.log(3)) / 2))  # 0.5158
    assert q["purity"] == pytest.approx(5 / 6) and q["clusters"] == 3


def test_perfect_clustering_with_renamed_clusters_scores_one():
    q = cluster_quality(TRUE, [7, 7, 7, 3, 3, 3])
    assert q == {"ari": pytest.approx(1.0), "nmi": pytest.approx(1.0), "acc": 1.0, "purity": 1.0, "clusters": 2}


def test_clustering_accuracy_matches_clusters_to_classes_one_to_one():
    from fewshot.metrics import clustering_accuracy
    assert clustering_accuracy(TRUE, PRED) == pytest.approx(4 / 6)  # {0,0} -> 0, {1,1} -> 1, {0,1} unmatched
    assert clustering_accuracy(TRUE, [0] * 6) == 0.5  # one cluster matches one class
    # purity lets two clusters take the same class; ACC does not
    true, pred = [0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 2, 2]
    assert purity(true, pred) == 1.0 and clustering_accuracy(true, pred) == pytest.approx(4 / 6)
