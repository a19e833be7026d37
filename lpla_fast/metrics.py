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

from typing import Dict, Sequence, Tuple

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


def _bootstrap_counts(positions: np.ndarray, n_unique: int, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Per-distinct-score counts (n_rows, n_unique) of n_rows resamples (with replacement)."""
    draws = positions[rng.integers(0, positions.size, size=(n_rows, positions.size))]
    flat = (draws + n_unique * np.arange(n_rows)[:, None]).reshape(-1)
    return np.bincount(flat, minlength=n_rows * n_unique).reshape(n_rows, n_unique).astype(np.float64)


def bootstrap_metrics(
    scores, is_member, n_bootstrap: int = 1000, seed: int = 0, fpr_targets: Sequence[float] = FPR_TARGETS
) -> Dict[str, np.ndarray]:
    """Stratified bootstrap replicates of every metric: {name: (n_bootstrap,) array}.

    Members and non-members are resampled separately with replacement; the work is
    vectorized over replicates in chunks that bound memory.
    """
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    scores, labels = _as_inputs(scores, is_member)
    unique, pos1, pos0 = _class_counts(scores, labels)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(unique.size, labels.size))
    parts = []
    for start in range(0, n_bootstrap, chunk):
        rows = min(chunk, n_bootstrap - start)
        c1 = _bootstrap_counts(pos1, unique.size, rows, rng)
        c0 = _bootstrap_counts(pos0, unique.size, rows, rng)
        parts.append(_metrics_from_counts(c1, c0, fpr_targets))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


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
