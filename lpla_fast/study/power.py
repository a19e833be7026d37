"""What a study can detect: the power of the paired AUC comparison across seeds.

The mean over S seeds of the paired differences d_s = AUC_a - AUC_b has variance
(between + within(n)) / S, where `within(n)` is the per-seed sampling variance of one
difference (DeLong's, with n members and n non-members per target; it falls as 1/n) and
`between` the variance of the seeds' true differences (targets trained on different members
with different randomness differ). Both are measured from a run's paired attack comparisons:
`within` is the mean of the seeds' DeLong variances and `between` the variance of the per-seed
differences beyond it (at least 0). A two-sided test at level alpha detects a difference delta
with the asked power when (z_{1-alpha/2} + z_power) * sqrt((between + within(n)) / S) <= delta.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

from .results import Comparison, PowerAnalysis


def _z_sum(alpha: float, power: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2) + norm.ppf(power))


def detectable_difference(within: float, between: float, seeds: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest paired difference of means over `seeds` that a two-sided level-alpha test
    detects with the given power (normal approximation)."""
    return _z_sum(alpha, power) * math.sqrt(max(between + within, 0.0) / seeds)


def seeds_needed(within: float, between: float, target: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """The fewest seeds whose mean detects `target` with the given power."""
    return max(2, int(math.ceil(_z_sum(alpha, power) ** 2 * (between + within) / target ** 2)))


def variance_components(per_seed: Sequence[Sequence[dict]], confidence: float = 0.95) -> Optional[tuple]:
    """(within, between): the mean per-seed DeLong variance of a difference and the variance of the
    seeds' true differences, averaged over comparisons with at least two paired seeds; None without any.

    per_seed: for each comparison, its seeds' {"difference", "low", "high"} (a DeLong interval at
    `confidence`, from which the variance is read back)."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + confidence / 2)
    within, between = [], []
    for seeds in per_seed:
        if len(seeds) < 2:
            continue
        var = np.array([((s["high"] - s["low"]) / (2 * z)) ** 2 for s in seeds])
        diffs = np.array([s["difference"] for s in seeds])
        within.append(var.mean())
        between.append(max(diffs.var(ddof=1) - var.mean(), 0.0))
    if not within:
        return None
    return float(np.mean(within)), float(np.mean(between))


def analyse(comparisons: List[Comparison], target: float = 0.02, alpha: float = 0.05, power: float = 0.8,
            factors: Sequence[float] = (1, 2, 4, 8, 16)) -> Optional[PowerAnalysis]:
    """The power of this run's paired attack comparisons and the sizes that reach `target`: for
    members (and as many non-members) per target of `factors` times this run's, the seeds needed."""
    mine = [c for c in comparisons if c.claim == "attack" and c.paired and len(c.per_seed) >= 2]
    components = variance_components([c.per_seed for c in mine])
    if components is None:
        return None
    within, between = components
    n, seeds = mine[0].n_members, mine[0].seeds
    plans = []
    for f in factors:
        w = within / f
        s = seeds_needed(w, between, target, alpha, power)
        plans.append({"members": int(round(n * f)), "seeds": s,
                      "detectable": detectable_difference(w, between, s, alpha, power)})
    return PowerAnalysis(comparisons=len(mine), n_members=n, n_nonmembers=mine[0].n_nonmembers, seeds=seeds,
                         within=within, between=between,
                         detectable=detectable_difference(within, between, seeds, alpha, power),
                         target=target, alpha=alpha, power=power, plans=plans)
