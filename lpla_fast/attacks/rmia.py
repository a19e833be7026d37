"""RMIA (Zarifzadeh et al., 2024): the candidate against population samples, each
normalized by the reference encoders, for any statistic.

RMIA needs a likelihood Pr(x | theta) of a sample under a model. Our statistics are not
probabilities, so we define one: each encoder's statistic is standardized by its own
population (mean 0, std 1 per coordinate), projected on the direction w in which members
lie (learned from the reference encoders' members and non-members, never assumed),
scaled to unit variance over the population, and passed through the normal CDF:

    L(x | theta) = Phi(u_theta(x)),   u_theta(x) = w . t_theta(x) / sd_pop(w . t_theta).

L is positive, increases with the evidence of membership and lies in (0, 1) like a
model's probability of the true label. That upper bound is what RMIA's offline correction
assumes: Pr(x) ~ (1 + a)/2 * mean_out L(x) + (1 - a)/2 stands for the average of an
out-model and an in-model whose value is pulled towards 1; exp(u) has no such ceiling.

Pr(x) is the mean of L(x | theta_r) over every reference (online: half of them trained
on x) or the corrected mean over those that did not (offline). The same is computed for
every population sample z (out of every reference). The ratio
ratio(x) = L(x | target) / Pr(x) is compared with each z's, and the score is the fraction
of the population that x dominates: ratio(x) / ratio(z) > gamma. `offline_a="auto"`
picks a in {0, 0.1, ..., 1} by attacking each reference encoder with the others (AUC
against its in_mask), as RMIA tunes it on a reference model.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm as normal

from .. import metrics
from . import gaussian
from .per_sample import ReferenceAttack, learn_direction

A_GRID = tuple(np.round(np.arange(0.0, 1.01, 0.1), 2))


def _log_prior(log_l: np.ndarray, use: np.ndarray, a) -> np.ndarray:
    """log Pr(x) from log L (R, N): the mean of L over the references where `use`, then,
    offline (a is not None), the (1 + a)/2 correction."""
    masked = np.where(use, log_l, -np.inf)
    log_mean = logsumexp(masked, axis=0) - np.log(use.sum(axis=0))
    if a is None:
        return log_mean
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log((1 + a) / 2) + log_mean, np.log((1 - a) / 2))


def _dominance(log_ratio_x: np.ndarray, sorted_log_ratio_z: np.ndarray, log_gamma: float) -> np.ndarray:
    """Fraction of z with ratio(x) / ratio(z) > gamma."""
    return np.searchsorted(sorted_log_ratio_z, log_ratio_x - log_gamma, side="left") / sorted_log_ratio_z.size


class RMIA(ReferenceAttack):
    """Robust membership inference attack with reference encoders and a population.

    Args:
        statistic: one of statistics.STATISTICS.
        online: average L over every reference (True) or over those out of each candidate,
            with the offline correction (False).
        offline_a: "auto" or a in [0, 1] (offline only).
        gamma: the dominance margin (RMIA's gamma; 1 compares the ratios as they are).
        p, log, neighbours, views: the statistic's settings, as in LiRA.
        reference_fpr: threshold_ flags samples dominating 1 - reference_fpr of the population.
        min_std: floor of every standard deviation.

    Fitted: direction_, target_scale_, log_prior_ (N,), log_ratio_population_ (M, sorted),
    a_ (offline), target_moments_, threshold_.
    """

    name = "rmia"
    label = "RMIA"
    min_views = 1

    def __init__(self, statistic: str = "lpla", online: bool = True, offline_a="auto", gamma: float = 1.0,
                 p: float = 2.0, log: bool = True, neighbours: int = 10, views: str = "mean",
                 reference_fpr: float = 0.1, min_std: float = 1e-6):
        self._init_statistic(statistic, p, log, neighbours, views, True, min_std)
        number = isinstance(offline_a, (int, float)) and not isinstance(offline_a, bool)
        if offline_a != "auto" and not (number and 0 <= offline_a <= 1):
            raise ValueError(f"offline_a must be 'auto' or a number in [0, 1], got {offline_a!r}")
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if not 0 < reference_fpr < 1:
            raise ValueError(f"reference_fpr must be in (0, 1), got {reference_fpr}")
        self.online = bool(online)
        self.offline_a = offline_a if offline_a == "auto" else float(offline_a)
        self.gamma = float(gamma)
        self.reference_fpr = float(reference_fpr)

    def _log_likelihood(self, t: np.ndarray, pop: np.ndarray):
        """log L of standardized values t (..., n, V) given the same encoder's population pop (..., M, V)."""
        scale = np.maximum((pop @ self.direction_).std(axis=-1, ddof=1), self.min_std)
        return normal.logcdf((t @ self.direction_) / np.asarray(scale)[..., None]), scale

    def fit(self, knowledge) -> "RMIA":
        obs, pop, target_pop = self._measure(knowledge, self.online, need_population=True)
        mask = knowledge.in_mask
        self.direction_ = learn_direction(obs, mask, self.min_std)
        log_l_x, _ = self._log_likelihood(obs, pop)            # (R, N)
        log_l_z, _ = self._log_likelihood(pop, pop)            # (R, M)
        log_l_target_z, self.target_scale_ = self._log_likelihood(target_pop, target_pop)
        self.target_scale_ = float(self.target_scale_)
        self.a_ = None if self.online else (self._tune_a(log_l_x, log_l_z, mask) if self.offline_a == "auto"
                                            else self.offline_a)
        use_x = np.ones_like(mask) if self.online else ~mask
        self.log_prior_ = _log_prior(log_l_x, use_x, self.a_)
        log_prior_z = _log_prior(log_l_z, np.ones(log_l_z.shape, bool), self.a_)
        self.log_ratio_population_ = np.sort(log_l_target_z - log_prior_z)
        self.threshold_ = 1.0 - self.reference_fpr
        return self

    def _tune_a(self, log_l_x: np.ndarray, log_l_z: np.ndarray, mask: np.ndarray) -> float:
        """The a with the best mean AUC when each reference is attacked with the others."""
        R = mask.shape[0]
        best, best_auc = 0.0, -1.0
        for a in A_GRID:
            aucs = []
            for r in range(R):
                others = np.arange(R) != r
                use = ~mask[others]
                known = use.any(axis=0)
                if not known.any() or mask[r, known].all() or not mask[r, known].any():
                    continue
                prior_x = _log_prior(log_l_x[others][:, known], use[:, known], a)
                prior_z = _log_prior(log_l_z[others], np.ones(log_l_z[others].shape, bool), a)
                ratio_z = np.sort(log_l_z[r] - prior_z)
                scores = _dominance(log_l_x[r, known] - prior_x, ratio_z, np.log(self.gamma))
                aucs.append(metrics.roc_auc(scores, mask[r, known]))
            if aucs and np.mean(aucs) > best_auc:
                best, best_auc = float(a), float(np.mean(aucs))
        return best

    def score(self, views) -> np.ndarray:
        t = self._target(views)
        log_l = normal.logcdf((t @ self.direction_) / self.target_scale_)
        return _dominance(log_l - self.log_prior_, self.log_ratio_population_, np.log(self.gamma))

    def _state(self) -> dict:
        state = self._shared_state()
        state.update(direction=gaussian.to_list(self.direction_), target_scale=self.target_scale_,
                     log_prior=gaussian.to_list(self.log_prior_), a=self.a_,
                     log_ratio_population=gaussian.to_list(self.log_ratio_population_))
        return state

    def _set_state(self, state: dict) -> None:
        self._set_shared_state(state)
        self.direction_ = gaussian.from_list(state["direction"])
        self.target_scale_ = float(state["target_scale"])
        self.log_prior_ = gaussian.from_list(state["log_prior"])
        self.log_ratio_population_ = gaussian.from_list(state["log_ratio_population"])
        self.a_ = None if state["a"] is None else float(state["a"])
