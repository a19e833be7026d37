"""Metrics equal scikit-learn's and brute-force definitions; the bootstrap is stratified and seeded."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve as sklearn_roc_curve

from lpla_fast import metrics


def random_inputs(seed, n=300, ties=True):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    scores = rng.normal(size=n) + 0.5 * labels
    return (np.round(scores, 1) if ties else scores), labels


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn(seed):
    scores, labels = random_inputs(seed)
    assert metrics.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_roc_curve_equals_sklearn(seed):
    scores, labels = random_inputs(seed)
    fpr, tpr = metrics.roc_curve(scores, labels)
    sk_fpr, sk_tpr, _ = sklearn_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def brute_force(scores, labels, fpr_target):
    best_balanced, best_tpr = 0.5, 0.0
    for t in np.unique(scores):
        flagged = scores >= t
        tpr, fpr = flagged[labels].mean(), flagged[~labels].mean()
        best_balanced = max(best_balanced, (tpr + 1 - fpr) / 2)
        if fpr <= fpr_target:
            best_tpr = max(best_tpr, tpr)
    return best_balanced, best_tpr


@pytest.mark.parametrize("seed", range(3))
def test_balanced_accuracy_and_tpr_at_fpr_match_brute_force(seed):
    scores, labels = random_inputs(seed, ties=seed == 0)
    for fpr in (0.001, 0.01, 0.1):
        balanced, tpr = brute_force(scores, labels, fpr)
        assert metrics.best_balanced_accuracy(scores, labels) == pytest.approx(balanced)
        assert metrics.tpr_at_fpr(scores, labels, fpr) == pytest.approx(tpr)


def test_bootstrap_equals_a_plain_loop_over_stratified_resamples():
    scores, labels = random_inputs(7, n=120)
    members, nonmembers = scores[labels], scores[~labels]
    reps = metrics.bootstrap_metrics(scores, labels, n_bootstrap=50, seed=3)
    rng = np.random.default_rng(3)  # same draws: all member resamples, then all non-member ones
    draws_in = rng.integers(0, members.size, size=(50, members.size))
    draws_out = rng.integers(0, nonmembers.size, size=(50, nonmembers.size))
    for b in range(50):
        s = np.concatenate([members[draws_in[b]], nonmembers[draws_out[b]]])
        y = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
        assert reps["auc"][b] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert reps["0.01"][b] == pytest.approx(metrics.tpr_at_fpr(s, y, 0.01))


def test_evaluate_is_seeded_and_its_intervals_bracket_the_estimates():
    scores, labels = random_inputs(1, n=400, ties=False)
    first = metrics.evaluate(scores, labels, n_bootstrap=300, seed=5)
    assert first == metrics.evaluate(scores, labels, n_bootstrap=300, seed=5)
    assert set(first) >= {"auc", "balanced_accuracy", "tpr_at_fpr", "ci", "n_members", "n_nonmembers"}
    assert set(first["tpr_at_fpr"]) == {"0.001", "0.01", "0.1"}
    lo, hi = first["ci"]["auc"]
    assert lo < first["auc"] < hi and hi - lo < 0.2
    for key, (lo, hi) in first["ci"]["tpr_at_fpr"].items():
        assert 0.0 <= lo <= hi <= 1.0
    assert first["n_members"] + first["n_nonmembers"] == 400


def test_perfect_and_reversed_scores():
    labels = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    scores = np.r_[np.full(50, 2.0), np.full(50, 1.0)]
    result = metrics.evaluate(scores, labels, n_bootstrap=20)
    assert result["auc"] == 1.0 and result["balanced_accuracy"] == 1.0
    assert result["tpr_at_fpr"]["0.001"] == 1.0
    assert metrics.roc_auc(-scores, labels) == 0.0


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([0.1, np.nan, 0.3], [1, 0, 1], "NaN"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "both members and non-members"),
        ([0.1, 0.2], [1, 0, 1], "same length"),
        ([0.1, 0.2], [2, 0], "boolean or 0/1"),
    ],
)
def test_bad_input_errors(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        metrics.evaluate(scores, labels)
