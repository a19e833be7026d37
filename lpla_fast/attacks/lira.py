"""LiRA (Carlini et al., 2022): per-sample Gaussians over reference encoders, for any statistic.

Each candidate's statistic (V values; see `statistics`) varies from encoder to encoder.
Online, the references that trained on the candidate give its "in" Gaussian
N(mu_in[i], C_in[i]) and those that did not its "out" Gaussian; the target's value x_i
scores log N(x_i; in) - log N(x_i; out). Offline, only the "out" Gaussian is used, in a
one-sided test along the direction w in which members lie, learned from the reference
encoders' own members and non-members (never assumed): the score is the z-statistic
w.(x - mu_out[i]) / sqrt(w' C_out[i] w) (the test's p-value is 1 - Phi(score)).

Variances: a handful of references cannot estimate one variance per sample (LiRA fixes
the variance below 64 shadow models). A candidate uses its own covariance on a side
where it has at least `min_per_side` observations (and more than V + 1 for a joint
statistic), else the global one pooled over every candidate's deviations from its own
mean ("auto"); fixed_variance=True always uses the global one. With balanced masks and
the default min_per_side=8, R < 16 references means a fixed variance. With R = 2 (one
reference on each side of every candidate) the fixed variance comes from the population's
spread from encoder to encoder. Means are
per-sample sample means (LiRA uses medians, which are noisier with 4 references).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.stats import norm as normal

from . import gaussian
from .per_sample import ReferenceAttack, learn_direction


def _side_model(obs: np.ndarray, side: np.ndarray, per_sample: str, min_per_side: int, min_std: float,
                diagonal: bool, population: Optional[np.ndarray] = None):
    """Per-sample mean (N, V) and covariance ((V, V) global, or (N, V, V)) of obs (R, N, V)
    over the references where side (R, N) is True. When no candidate has two references on
    the side (R = 2 with balanced masks), the global covariance is the population's (R, M, V)
    spread from encoder to encoder: population samples are out of every encoder, so this is
    the out side's variance, which LiRA's fixed variance assumes for both sides."""
    count = side.sum(axis=0)
    weights = side[..., None].astype(np.float64)
    mean = (obs * weights).sum(axis=0) / np.maximum(count, 1)[:, None]
    residuals = (obs - mean[None]) * weights
    dof = float(np.maximum(count - 1, 0).sum())
    flat = residuals.reshape(-1, obs.shape[-1])
    if dof == 0:
        if population is None or population.shape[0] < 2:
            raise ValueError("no candidate has two reference encoders on one side, so no variance can be estimated; "
                             "use more reference encoders (R >= 4 with balanced masks), or give population views")
        flat = (population - population.mean(axis=0, keepdims=True)).reshape(-1, obs.shape[-1])
        dof = float(population.shape[1] * (population.shape[0] - 1))
    global_cov = gaussian.covariance(flat, dof, min_std, diagonal)
    v = obs.shape[-1]
    enough = count >= (2 if per_sample == "all" else min_per_side)
    if not diagonal:
        enough &= count > v + 1
    if per_sample == "never" or not enough.any():
        return mean, global_cov
    own = np.einsum("rni,rnj->nij", residuals, residuals) / np.maximum(count - 1, 1)[:, None, None]
    if diagonal:
        own *= np.eye(v)
    own += (min_std ** 2) * np.eye(v)
    return mean, np.where(enough[:, None, None], own, global_cov)


class LiRA(ReferenceAttack):
    """Likelihood-ratio attack with per-sample Gaussians over reference encoders.

    Args:
        statistic: one of statistics.STATISTICS ("lpla", "encodermi", "knn", "mean_spread",
            "resultant", "multi_p").
        online: fit in and out Gaussians (True) or out only, one-sided (False).
        p: the norm's order for the norm statistics.
        log: the norm statistics use log ||z||_p.
        neighbours: k of the "knn" statistic.
        views: "mean" (default) or "per-view" for the per-view "lpla" statistic.
        fixed_variance: "auto", True (global) or False (own wherever >= 2 observations).
        min_per_side: observations a candidate needs for its own variance under "auto".
        standardize: standardize each encoder's statistic by its own population: "auto"
            (whenever the knowledge holds one), True (population required) or False.
        reference_fpr: offline, threshold_ is the one-sided test at this level.
        min_std: ridge on every standard deviation.

    Fitted: mean_in_ / cov_in_ (online), mean_out_ / cov_out_, direction_ (offline),
    standardized_, target_moments_, threshold_ (online 0: the likelihood ratio at equal priors).
    """

    name = "lira"
    label = "LiRA"
    min_views = 1

    def __init__(self, statistic: str = "lpla", online: bool = True, p: float = 2.0, log: bool = True,
                 neighbours: int = 10, views: str = "mean", fixed_variance="auto", min_per_side: int = 8,
                 standardize="auto", reference_fpr: float = 0.1, min_std: float = 1e-6):
        self._init_statistic(statistic, p, log, neighbours, views, standardize, min_std)
        if fixed_variance not in ("auto", True, False):
            raise ValueError(f"fixed_variance must be 'auto', True or False, got {fixed_variance!r}")
        if int(min_per_side) != min_per_side or min_per_side < 2:
            raise ValueError(f"min_per_side must be an integer >= 2, got {min_per_side}")
        if not 0 < reference_fpr < 1:
            raise ValueError(f"reference_fpr must be in (0, 1), got {reference_fpr}")
        self.online = bool(online)
        self.fixed_variance = fixed_variance
        self.min_per_side = int(min_per_side)
        self.reference_fpr = float(reference_fpr)

    def fit(self, knowledge) -> "LiRA":
        obs, population, _ = self._measure(knowledge, self.online, need_population=False)
        mask = knowledge.in_mask
        per_sample = {"auto": "enough", True: "never", False: "all"}[self.fixed_variance]
        diagonal = self._info.per_view
        args = (per_sample, self.min_per_side, self.min_std, diagonal, population)
        self.mean_out_, self.cov_out_ = _side_model(obs, ~mask, *args)
        if self.online:
            self.mean_in_, self.cov_in_ = _side_model(obs, mask, *args)
            self.direction_ = None
            self.threshold_ = 0.0
        else:
            self.mean_in_ = self.cov_in_ = None
            self.direction_ = learn_direction(obs, mask, self.min_std)
            self.threshold_ = float(normal.ppf(1.0 - self.reference_fpr))
        return self

    def score(self, views) -> np.ndarray:
        x = self._target(views)
        if self.online:
            return gaussian.log_ratio(x, self.mean_in_, self.cov_in_, self.mean_out_, self.cov_out_)
        w = self.direction_
        spread = np.sqrt(np.einsum("v,...vu,u->...", w, self.cov_out_, w))
        return (x - self.mean_out_) @ w / spread

    def _state(self) -> dict:
        state = self._shared_state()
        for key in ("mean_in_", "cov_in_", "mean_out_", "cov_out_", "direction_"):
            value = getattr(self, key)
            state[key.rstrip("_")] = None if value is None else gaussian.to_list(value)
        return state

    def _set_state(self, state: dict) -> None:
        self._set_shared_state(state)
        for key in ("mean_in_", "cov_in_", "mean_out_", "cov_out_", "direction_"):
            value = state[key.rstrip("_")]
            setattr(self, key, None if value is None else gaussian.from_list(value))
