"""Paired comparisons of two attacks on the same samples (DeLong, paired bootstrap, Holm), the
low-FPR count rule and the empirical epsilon of DP auditing, against known answers."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from lpla_fast import metrics


def correlated_binormal(rng, n, shift_a, shift_b, rho=0.6):
    """n members and n non-members; each attack's score is unit-variance Gaussian noise, the
    two correlated by rho, shifted up by shift_a / shift_b for members. AUC = Phi(shift / sqrt 2)."""
    labels = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    shared = rng.normal(size=2 * n)
    a = math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.normal(size=2 * n) + shift_a * labels
    b = math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.normal(size=2 * n) + shift_b * labels
    return a, b, labels


def brute_force_delong(a, b, labels):
    """DeLong's variance of AUC(a) - AUC(b) from its O(m n) definition (structural components)."""
    def placements(s):
        x, y = s[labels], s[~labels]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()

    (va, wa, auc_a), (vb, wb, auc_b) = placements(a), placements(b)
    m, n = labels.sum(), (~labels).sum()
    s10, s01 = np.cov(np.stack([va, vb])), np.cov(np.stack([wa, wb]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return auc_a - auc_b, var


@pytest.mark.parametrize("seed", range(4))
def test_delong_matches_the_brute_force_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    a, b, labels = correlated_binormal(rng, 30, 0.8, 0.3)
    a, b = np.round(a, 1), np.round(b, 1)  # ties within and across classes
    difference, var = brute_force_delong(a, b, labels)
    result = metrics.paired_delong(a, b, labels)
    assert result.difference == pytest.approx(difference, abs=1e-12)
    assert result.a == pytest.approx(metrics.roc_auc(a, labels), abs=1e-12)
    assert result.b == pytest.approx(metrics.roc_auc(b, labels), abs=1e-12)
    half = (result.high - result.low) / 2
    assert half == pytest.approx(norm.ppf(0.975) * math.sqrt(var), rel=1e-9)
    assert result.p_value == pytest.approx(2 * norm.sf(abs(difference) / math.sqrt(var)), rel=1e-9)


def test_identical_scores_differ_by_exactly_zero():
    rng = np.random.default_rng(0)
    a, _, labels = correlated_binormal(rng, 50, 1.0, 1.0)
    for result in (metrics.paired_delong(a, a, labels), metrics.paired_tpr_bootstrap(a, a, labels, 0.1, 200)):
        assert (result.difference, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert metrics.paired_delong(a, a, labels).to_dict()["difference"] == 0.0


def test_delong_test_has_its_size_under_the_null():
    """Two correlated attacks of equal AUC: the 5% test rejects in about 5% of 1000 worlds."""
    rng = np.random.default_rng(1)
    worlds = 1000
    rejected = sum(metrics.paired_delong(*correlated_binormal(rng, 100, 0.7, 0.7)).p_value < 0.05
                   for _ in range(worlds))
    tolerance = 3 * math.sqrt(worlds * 0.05 * 0.95)  # three binomial standard deviations
    assert abs(rejected - 0.05 * worlds) < tolerance, rejected


def test_delong_interval_covers_the_known_difference():
    """Binormal scores with unit variances: AUC = Phi(shift / sqrt 2), so the true difference is known."""
    rng = np.random.default_rng(2)
    truth = norm.cdf(1.0 / math.sqrt(2)) - norm.cdf(0.6 / math.sqrt(2))
    worlds = 600
    covered = 0
    for _ in range(worlds):
        result = metrics.paired_delong(*correlated_binormal(rng, 150, 1.0, 0.6))
        covered += result.low <= truth <= result.high
    assert abs(covered - 0.95 * worlds) < 3 * math.sqrt(worlds * 0.05 * 0.95), covered


def test_paired_bootstrap_uses_the_same_resamples_for_both_attacks():
    rng = np.random.default_rng(3)
    a, b, labels = correlated_binormal(rng, 80, 1.0, 0.5)
    reps_a, reps_b = metrics.paired_bootstrap_metrics(a, b, labels, n_bootstrap=100, seed=4)
    alone = metrics.bootstrap_metrics(a, labels, n_bootstrap=100, seed=4)
    np.testing.assert_array_equal(reps_a["auc"], alone["auc"])
    # Shifting b by a constant keeps its ranks: on the same resamples its replicates are a's exactly.
    same_a, same_shifted = metrics.paired_bootstrap_metrics(a, a + 3.0, labels, n_bootstrap=100, seed=4)
    np.testing.assert_array_equal(same_a["0.01"], same_shifted["0.01"])
    result = metrics.paired_tpr_bootstrap(a, b, labels, fpr=0.1, n_bootstrap=300, seed=0)
    assert result.difference == pytest.approx(metrics.tpr_at_fpr(a, labels, 0.1) - metrics.tpr_at_fpr(b, labels, 0.1))
    assert result.low <= result.difference <= result.high and 0.0 < result.p_value <= 1.0


def test_holm_adjusts_a_family_step_down():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert metrics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert metrics.holm([0.5, None, 0.9]) == [pytest.approx(1.0), None, pytest.approx(1.0)]
    assert metrics.holm([]) == []


def test_tpr_at_alpha_needs_ten_over_alpha_nonmembers():
    assert metrics.min_negatives(0.01) == 1000 and metrics.min_negatives(0.001) == 10000
    assert metrics.min_negatives(0.1) == 100
    assert not metrics.supports_tpr(0.01, 128) and metrics.supports_tpr(0.1, 128)


def test_perfect_attack_proves_the_largest_epsilon_its_sample_allows():
    n = 128
    labels = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    # Clopper-Pearson at 95%: TPR_lo = 0.025^(1/n) with every member flagged, FPR_hi = 1 - 0.025^(1/n).
    q = 0.025 ** (1 / n)
    expected = math.log((q - 1e-5) / (1 - q))
    assert metrics.empirical_epsilon(labels.astype(float), labels) == pytest.approx(expected)
    assert metrics.max_provable_epsilon(n, n) == pytest.approx(expected)
    assert metrics.max_provable_epsilon(10 * n, 10 * n) > expected + 2


def test_empirical_epsilon_equals_a_loop_over_thresholds():
    rng = np.random.default_rng(5)
    labels = rng.random(200) < 0.5
    scores = np.round(rng.normal(size=200) + 1.5 * labels, 1)
    n1, n0 = labels.sum(), (~labels).sum()
    best = 0.0
    for t in np.unique(scores):
        tp, fp = (scores[labels] >= t).sum(), (scores[~labels] >= t).sum()
        tpr_lo = binomtest(tp, n1).proportion_ci(0.95, "exact").low
        fpr_hi = binomtest(fp, n0).proportion_ci(0.95, "exact").high
        if tpr_lo > 1e-5:
            best = max(best, math.log((tpr_lo - 1e-5) / fpr_hi))
        if tpr_lo < 1 and 1 - fpr_hi > 1e-5:
            best = max(best, math.log((1 - fpr_hi - 1e-5) / (1 - tpr_lo)))
    assert metrics.empirical_epsilon(scores, labels) == pytest.approx(best, rel=1e-6)
    assert 0 < best < metrics.max_provable_epsilon(n1, n0)


def test_no_signal_proves_no_epsilon():
    rng = np.random.default_rng(6)
    labels = rng.random(400) < 0.5
    assert metrics.empirical_epsilon(rng.normal(size=400), labels) < 0.3
