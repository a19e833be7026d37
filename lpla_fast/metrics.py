"""Membership-inference metrics with bootstrap confidence intervals.

Scores follow the attacks' convention: larger means more likely a member.

Definitions (all computed from the empirical ROC, whose points are the thresholds
"score >= t" over every distinct score, plus the point (0, 0)):
- `auc`: area under the ROC curve with tied scores counted as one half (the
  Mann-Whitney statistic); equal to `sklearn.metrics.roc_auc_score`.
- `balanced_accuracy`: the best (TPR + TNR) / 2 over those thresholds (0.5 at worst,
  since "flag nothing" is one of them).
- `tpr_at_fpr`: the largest TPR among ROC points whose FPR is <= the target FPR. This is
  step interpolation: conservative, never the linear interpolation between points. With
  fewer than 1/FPR non-members only FPR = 0 qualifies, so e.g. TPR at 0.1% on 200
  non-members is the TPR reached before the first false positive.
- `ci`: 95% percentile-bootstrap intervals; members and non-members are resampled
  separately (stratified), so every replicate keeps both class sizes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

FPR_TARGETS: Tuple[float, ...] = (0.001, 0.01, 0.1)
_CHUNK_CELLS = 4_000_000  # bootstrap replicates x distinct scores per chunk (~32 MB of float64)


def _as_inputs(scores, is_member) -> Tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(is_member).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and is_member must have the same length, got {scores.size} and {labels.size}")
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("is_member must be boolean or 0/1")
        labels = labels.astype(bool)
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(f"scores contain NaN or Inf at {bad.size} positions (first: {bad[:5].tolist()})")
    n_members = int(labels.sum())
    if n_members == 0 or n_members == labels.size:
        raise ValueError(
            f"need both members and non-members, got {n_members} members and {labels.size - n_members} non-members"
        )
    return scores, labels


def _class_counts(scores: np.ndarray, labels: np.ndarray):
    """Distinct scores (ascending) and each sample's position among them, per class."""
    unique, position = np.unique(scores, return_inverse=True)
    return unique, position[labels], position[~labels]


def _roc_from_counts(c1: np.ndarray, c0: np.ndarray):
    """ROC points from per-distinct-score counts (B, U), scores ascending.

    Returns fpr, tpr of shape (B, U + 1): the point (0, 0) and then the thresholds from
    the largest distinct score down to the smallest.
    """
    n1 = c1.sum(axis=1, keepdims=True)
    n0 = c0.sum(axis=1, keepdims=True)
    zero = np.zeros((c1.shape[0], 1))
    tpr = np.concatenate([zero, np.cumsum(c1[:, ::-1], axis=1) / n1], axis=1)
    fpr = np.concatenate([zero, np.cumsum(c0[:, ::-1], axis=1) / n0], axis=1)
    return fpr, tpr


def _metrics_from_counts(c1: np.ndarray, c0: np.ndarray, fpr_targets: Sequence[float]) -> Dict[str, np.ndarray]:
    """AUC, best balanced accuracy and TPR at each FPR for each row of counts (B, U)."""
    n1 = c1.sum(axis=1)
    n0 = c0.sum(axis=1)
    # Mann-Whitney: each member beats the non-members below it and ties with those equal.
    below0 = np.cumsum(c0, axis=1) - c0
    auc = (c1 * (below0 + 0.5 * c0)).sum(axis=1) / (n1 * n0)
    fpr, tpr = _roc_from_counts(c1, c0)
    balanced = ((tpr + 1.0 - fpr) / 2.0).max(axis=1)
    out = {"auc": auc, "balanced_accuracy": balanced}
    for target in fpr_targets:
        # tpr never decreases along the curve, so the best allowed point is the last one.
        allowed = fpr <= target + 1e-12
        out[_fpr_key(target)] = np.where(allowed, tpr, 0.0).max(axis=1)
    return out


def _fpr_key(target: float) -> str:
    return f"{target:g}"


def roc_curve(scores, is_member) -> Tuple[np.ndarray, np.ndarray]:
    """Empirical ROC: (fpr, tpr), starting at (0, 0), one point per distinct score.

    Equal to `sklearn.metrics.roc_curve(is_member, scores, drop_intermediate=False)[:2]`.
    """
    scores, labels = _as_inputs(scores, is_member)
    unique, pos1, pos0 = _class_counts(scores, labels)
    c1 = np.bincount(pos1, minlength=unique.size)[None, :].astype(np.float64)
    c0 = np.bincount(pos0, minlength=unique.size)[None, :].astype(np.float64)
    fpr, tpr = _roc_from_counts(c1, c0)
    return fpr[0], tpr[0]


def roc_auc(scores, is_member) -> float:
    """ROC AUC with ties counted one half (equals sklearn's roc_auc_score)."""
    return float(_point_metrics(scores, is_member, ())["auc"])


def best_balanced_accuracy(scores, is_member) -> float:
    """The best balanced accuracy (TPR + TNR) / 2 over all thresholds."""
    return float(_point_metrics(scores, is_member, ())["balanced_accuracy"])


def tpr_at_fpr(scores, is_member, fpr: float) -> float:
    """The largest TPR among ROC points with FPR <= fpr (step interpolation, conservative)."""
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    return float(_point_metrics(scores, is_member, (fpr,))[_fpr_key(fpr)])


def _point_metrics(scores, is_member, fpr_targets):
    scores, labels = _as_inputs(scores, is_member)
    unique, pos1, pos0 = _class_counts(scores, labels)
    c1 = np.bincount(pos1, minlength=unique.size)[None, :].astype(np.float64)
    c0 = np.bincount(pos0, minlength=unique.size)[None, :].astype(np.float64)
    return {k: v[0] for k, v in _metrics_from_counts(c1, c0, fpr_targets).items()}


def _resampled_counts(positions: np.ndarray, draws: np.ndarray, n_unique: int) -> np.ndarray:
    """Per-distinct-score counts (n_rows, n_unique) of the resamples `draws` (n_rows, size) of
    one class, given each sample's position among the distinct scores."""
    n_rows = draws.shape[0]
    flat = (positions[draws] + n_unique * np.arange(n_rows)[:, None]).reshape(-1)
    return np.bincount(flat, minlength=n_rows * n_unique).reshape(n_rows, n_unique).astype(np.float64)


def _bootstrap_replicates(score_sets: Sequence[np.ndarray], labels: np.ndarray, n_bootstrap: int, seed: int,
                          fpr_targets: Sequence[float]) -> List[Dict[str, np.ndarray]]:
    """Stratified bootstrap replicates of every metric of each score array in `score_sets`, all
    scored on the same resamples of members and non-members (paired)."""
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    classes = [_class_counts(s, labels) for s in score_sets]
    n1, n0 = int(labels.sum()), int((~labels).sum())
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(max(c[0].size for c in classes), labels.size))
    parts: List[List[dict]] = [[] for _ in score_sets]
    for start in range(0, n_bootstrap, chunk):
        rows = min(chunk, n_bootstrap - start)
        draws1 = rng.integers(0, n1, size=(rows, n1))
        draws0 = rng.integers(0, n0, size=(rows, n0))
        for (unique, pos1, pos0), out in zip(classes, parts):
            c1 = _resampled_counts(pos1, draws1, unique.size)
            c0 = _resampled_counts(pos0, draws0, unique.size)
            out.append(_metrics_from_counts(c1, c0, fpr_targets))
    return [{k: np.concatenate([p[k] for p in out]) for k in out[0]} for out in parts]


def bootstrap_metrics(
    scores, is_member, n_bootstrap: int = 1000, seed: int = 0, fpr_targets: Sequence[float] = FPR_TARGETS
) -> Dict[str, np.ndarray]:
    """Stratified bootstrap replicates of every metric: {name: (n_bootstrap,) array}.

    Members and non-members are resampled separately with replacement; the work is
    vectorized over replicates in chunks that bound memory.
    """
    scores, labels = _as_inputs(scores, is_member)
    return _bootstrap_replicates([scores], labels, n_bootstrap, seed, fpr_targets)[0]


def paired_bootstrap_metrics(
    scores_a, scores_b, is_member, n_bootstrap: int = 1000, seed: int = 0,
    fpr_targets: Sequence[float] = FPR_TARGETS,
) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """bootstrap_metrics of two attacks scored on the same samples, on the same resamples of
    members and non-members (replicate b of both uses the same draws): their differences are
    paired. The first array's replicates equal bootstrap_metrics(scores_a, ...) for the same seed."""
    scores_a, labels = _as_inputs(scores_a, is_member)
    scores_b, _ = _as_inputs(scores_b, is_member)
    reps_a, reps_b = _bootstrap_replicates([scores_a, scores_b], labels, n_bootstrap, seed, fpr_targets)
    return reps_a, reps_b


def evaluate(scores, is_member, n_bootstrap: int = 1000, seed: int = 0, fpr_targets: Sequence[float] = FPR_TARGETS) -> dict:
    """Every metric with its 95% bootstrap CI, as plain JSON-able Python numbers.

    Returns {"auc", "balanced_accuracy", "tpr_at_fpr": {"0.001", "0.01", "0.1"},
    "ci": same structure with [lo, hi] pairs, "n_members", "n_nonmembers", "n_bootstrap"}.
    With n_bootstrap=0 the intervals are omitted (ci is None).
    """
    point = _point_metrics(scores, is_member, fpr_targets)
    labels = _as_inputs(scores, is_member)[1]
    keys = [_fpr_key(t) for t in fpr_targets]
    result = {
        "auc": float(point["auc"]),
        "balanced_accuracy": float(point["balanced_accuracy"]),
        "tpr_at_fpr": {k: float(point[k]) for k in keys},
        "ci": None,
        "n_members": int(labels.sum()),
        "n_nonmembers": int((~labels).sum()),
        "n_bootstrap": int(n_bootstrap),
    }
    if n_bootstrap > 0:
        reps = bootstrap_metrics(scores, is_member, n_bootstrap, seed, fpr_targets)

        def interval(values):
            lo, hi = np.percentile(values, [2.5, 97.5])
            return [float(lo), float(hi)]

        result["ci"] = {
            "auc": interval(reps["auc"]),
            "balanced_accuracy": interval(reps["balanced_accuracy"]),
            "tpr_at_fpr": {k: interval(reps[k]) for k in keys},
        }
    return result


# --- low-FPR numbers the data supports --------------------------------------------------------------

def min_negatives(alpha: float) -> int:
    """Non-members an evaluated set needs before TPR at FPR = alpha is reported: ceil(10 / alpha),
    so that the threshold rests on at least ten false positives (1,000 for 1 %, 10,000 for 0.1 %)."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return int(math.ceil(10.0 / alpha - 1e-9))  # 10 / 0.001 is 10000.000000000002 in floating point


def supports_tpr(alpha: float, n_nonmembers: int) -> bool:
    """Whether n_nonmembers is enough to report TPR at FPR = alpha (`min_negatives`)."""
    return int(n_nonmembers) >= min_negatives(alpha)


# --- paired comparisons of two attacks on the same samples --------------------------------------------

@dataclass
class PairedDifference:
    """A paired comparison of attack a with attack b on the same samples.

    difference: metric(a) - metric(b); low, high: its 95% interval (or the `confidence` asked);
    p_value: two-sided, for "no difference"; a, b: the metric of each attack; method: how the
    interval and p-value were drawn ("delong", "paired bootstrap", ...)."""

    difference: float
    low: float
    high: float
    p_value: float
    a: float
    b: float
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


def _z(confidence: float) -> float:
    from scipy.stats import norm

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2.0))


def delong_covariance(score_sets, is_member) -> Tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and DeLong's covariance matrix of them (k, k) for k attacks scored on the same
    samples, by the midrank algorithm of Sun & Xu (2014), O(k n log n).

    Each member's placement is the fraction of non-members below it (ties one half), each
    non-member's the fraction of members above it; the AUC is the mean member placement and its
    covariance is cov(member placements) / m + cov(non-member placements) / n (m members, n
    non-members). Midranks give all placements in one sort per array."""
    from scipy.stats import rankdata

    sets = [_as_inputs(s, is_member) for s in score_sets]
    labels = sets[0][1]
    scores = np.stack([s for s, _ in sets])
    X, Y = scores[:, labels], scores[:, ~labels]
    m, n = X.shape[1], Y.shape[1]
    combined = rankdata(np.concatenate([X, Y], axis=1), axis=1)
    member_place = (combined[:, :m] - rankdata(X, axis=1)) / n
    nonmember_place = 1.0 - (combined[:, m:] - rankdata(Y, axis=1)) / m
    auc = member_place.mean(axis=1)
    cov = np.atleast_2d(np.cov(member_place)) / m + np.atleast_2d(np.cov(nonmember_place)) / n
    return auc, cov


def paired_delong(scores_a, scores_b, labels, confidence: float = 0.95) -> PairedDifference:
    """AUC(a) - AUC(b) of two attacks scored on the same samples, with DeLong's interval and
    two-sided p-value for correlated ROC curves (DeLong, DeLong & Clarke-Pearson 1988).

    Identical scores give a difference of exactly 0 with interval [0, 0] and p = 1."""
    auc, cov = delong_covariance([scores_a, scores_b], labels)
    difference = float(auc[0] - auc[1])
    variance = max(float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), 0.0)
    if variance <= 1e-300:
        p_value = 1.0 if difference == 0.0 else 0.0
        return PairedDifference(difference, difference, difference, p_value, float(auc[0]), float(auc[1]), "delong")
    from scipy.stats import norm

    se = math.sqrt(variance)
    half = _z(confidence) * se
    p_value = float(2.0 * norm.sf(abs(difference) / se))
    return PairedDifference(difference, difference - half, difference + half, p_value, float(auc[0]), float(auc[1]),
                            "delong")


def bootstrap_difference(point: float, replicates: np.ndarray, a: float, b: float, method: str,
                         confidence: float = 0.95) -> PairedDifference:
    """A PairedDifference from bootstrap replicates of a difference, read as a normal
    approximation: interval point -/+ z * se and two-sided p = 2 Phi(-|point| / se), se the
    replicates' standard deviation. (A percentile test cannot give a p-value below
    2 / (replicates + 1), which no multiplicity adjustment over a family survives.)"""
    se = float(np.std(np.asarray(replicates, dtype=np.float64), ddof=1)) if np.size(replicates) > 1 else 0.0
    if se <= 1e-300:
        return PairedDifference(float(point), float(point), float(point), 1.0 if point == 0 else 0.0, float(a),
                                float(b), method)
    from scipy.stats import norm

    half = _z(confidence) * se
    return PairedDifference(float(point), float(point - half), float(point + half),
                            float(2.0 * norm.sf(abs(point) / se)), float(a), float(b), method)


def paired_tpr_bootstrap(scores_a, scores_b, labels, fpr: float = 0.01, n_bootstrap: int = 1000, seed: int = 0,
                         confidence: float = 0.95) -> PairedDifference:
    """TPR(a) - TPR(b) at the given FPR of two attacks scored on the same samples: a paired
    stratified bootstrap (each replicate resamples members and non-members once, for both)."""
    reps_a, reps_b = paired_bootstrap_metrics(scores_a, scores_b, labels, n_bootstrap, seed, (fpr,))
    key = _fpr_key(fpr)
    a, b = tpr_at_fpr(scores_a, labels, fpr), tpr_at_fpr(scores_b, labels, fpr)
    return bootstrap_difference(a - b, reps_a[key] - reps_b[key], a, b, "paired bootstrap", confidence)


def holm(p_values: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm-Bonferroni adjusted p-values of a family, in the given order (None stays None and
    does not count in the family). Reject at level a wherever the adjusted p-value is <= a."""
    present = [i for i, p in enumerate(p_values) if p is not None]
    order = sorted(present, key=lambda i: p_values[i])
    adjusted: List[Optional[float]] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


# --- empirical epsilon (DP auditing) ----------------------------------------------------------------

def _clopper_pearson(successes: np.ndarray, trials: int, confidence: float) -> Tuple[np.ndarray, np.ndarray]:
    """Two-sided Clopper-Pearson interval (lo, hi) of a binomial proportion, elementwise."""
    from scipy.stats import beta

    k = np.asarray(successes, dtype=np.float64)
    tail = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, beta.ppf(tail, k, trials - k + 1), 0.0)
        hi = np.where(k < trials, beta.ppf(1.0 - tail, k + 1, trials - k), 1.0)
    return lo, hi


def _epsilon_bound(tpr_lo, fpr_hi, delta: float) -> float:
    """The epsilon that rates certainly at least tpr_lo and at most fpr_hi (per threshold) prove."""
    with np.errstate(divide="ignore", invalid="ignore"):
        flagged = np.where((tpr_lo > delta) & (fpr_hi > 0), np.log((tpr_lo - delta) / fpr_hi), -np.inf)
        # The same test read the other way round: "not flagged" as the claim of non-membership.
        passed = np.where((1 - fpr_hi > delta) & (tpr_lo < 1), np.log((1 - fpr_hi - delta) / (1 - tpr_lo)), -np.inf)
    return float(max(0.0, np.max(flagged), np.max(passed)))


def empirical_epsilon(scores, labels, delta: float = 1e-5, confidence: float = 0.95) -> float:
    """The lower bound on a DP-SGD encoder's epsilon that a membership attack proves, as DP
    auditing computes it (Jagielski et al. 2020, Nasr et al. 2021).

    For every threshold "score >= t" the true and false positive rates get two-sided
    Clopper-Pearson intervals at `confidence`; (epsilon, delta)-DP requires
    TPR <= e^epsilon FPR + delta and 1 - FPR <= e^epsilon (1 - TPR) + delta, so
    epsilon >= max(log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo)))
    at every threshold; the bound is the largest over thresholds (0 when none proves anything).
    A few hundred samples prove little: see `max_provable_epsilon`."""
    scores, labels = _as_inputs(scores, labels)
    fpr, tpr = roc_curve(scores, labels)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    tpr_lo = _clopper_pearson(np.rint(tpr * n1), n1, confidence)[0]
    fpr_hi = _clopper_pearson(np.rint(fpr * n0), n0, confidence)[1]
    return _epsilon_bound(tpr_lo, fpr_hi, delta)


def max_provable_epsilon(n_members: int, n_nonmembers: int, delta: float = 1e-5, confidence: float = 0.95) -> float:
    """The largest epsilon `empirical_epsilon` can prove with this many samples: that of an attack
    that separates members from non-members perfectly."""
    tpr_lo = _clopper_pearson(np.array([n_members]), n_members, confidence)[0]
    fpr_hi = _clopper_pearson(np.array([0]), n_nonmembers, confidence)[1]
    return _epsilon_bound(tpr_lo, fpr_hi, delta)
