"""LpLA, the embedding Lp-norm likelihood attack, and its per-example (LiRA-style) variant.

The paper's abstract says only that LpLA infers membership from "the statistical
distribution characteristics of the p-norm of feature vectors". Everything below is our
own definition, and every choice is a parameter:

- statistic: s_k = ||z_k||_p of each query view k (p in (0, inf]), used as is
  (statistic="norm") or as log s_k (statistic="log", the default: norms are positive and
  right-skewed, their logs closer to Gaussian).
- density: member (`in`) and non-member (`out`) densities of the statistic, Gaussian
  (default) or a Gaussian KDE with Scott's bandwidth.
- aggregation: "sum" = sum_k [log p_in(s_k) - log p_out(s_k)] (views independent given
  membership; densities fitted on all views pooled) or "mean" = log p_in(m) - log p_out(m)
  at the view-mean statistic m (densities fitted on view means, so fit and score should
  use the same K).
- knowledge: with labelled data (a shadow encoder's members / non-members, or the audit
  calibration sets of the target itself) both densities are fitted. With reference
  non-members only, the side on which members lie cannot be learned, and we refuse to
  assume it: the in-density is modelled as the out-density widened by `reference_spread`
  (same centre), which makes the score a monotone function of sum_k z_k^2, z the
  standardized statistic: a two-sided anomaly score (with KDE: -sum_k log p_out(s_k)).
- standardize: each encoder's statistic is standardized with its own reference
  non-members (shadow with shadow_reference, target with target_reference), so a
  calibration fitted on a shadow encoder transfers to a target with another norm scale.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import norm as normal

from .. import ops
from ..calibration import LpLACalibration
from ..validation import as_views
from .base import Attack, AttackerKnowledge, best_threshold, check_views, init_params

STATISTICS = ("log", "norm")
DENSITIES = ("gaussian", "kde")
AGGREGATIONS = ("sum", "mean")
MODES = ("auto", "reference", "shadow", "audit")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def view_statistic(views, p: float, statistic: str, name: str = "views") -> np.ndarray:
    """(N, K) float64 statistic of each view: ||z||_p or log ||z||_p (via `ops.lp_norm`)."""
    norms = ops.lp_norm(views, p).to(torch.float64).cpu().numpy()
    return _transform(norms, statistic, name)


def _transform(norms: np.ndarray, statistic: str, name: str) -> np.ndarray:
    if statistic == "norm":
        return norms
    if (norms <= 0).any():
        raise ValueError(f"{name} holds {int((norms <= 0).sum())} zero-norm views; statistic='log' needs norms > 0")
    return np.log(norms)


def mean_std(values: np.ndarray, min_std: float) -> Tuple[float, float]:
    """Mean and sample standard deviation (floored at min_std) of all the values."""
    values = values.reshape(-1)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), max(std, min_std)


class LpLA(Attack):
    """Embedding Lp-norm likelihood attack (our definition; see the module docstring).

    Args:
        p: the norm's order, in (0, inf].
        statistic: "log" (log ||z||_p) or "norm" (||z||_p).
        density: "gaussian" (scored by the fused op through `calibration_`) or "kde".
        aggregation: "sum" over views of the per-view log-likelihood ratio, or "mean"
            (the ratio at the view-mean statistic).
        knowledge: which part of the AttackerKnowledge to use: "auto" (its level),
            "reference" (known non-members only), "shadow" or "audit".
        standardize: standardize each encoder's statistic with its own reference
            non-members.
        reference_spread: with reference-only knowledge, the in-density's width relative
            to the out-density (any value > 1 gives the same ranking).
        reference_fpr: with reference-only knowledge, `threshold_` flags this fraction of
            the reference non-members.
        min_std: floor of fitted standard deviations.
        max_kde_points: KDE support size (a seeded subsample beyond it).
        seed: seed of that subsample.

    Fitted: calibration_ (LpLACalibration for density="gaussian", else None), mode_,
    dim_, threshold_, kde_in_ / kde_out_ (KDE support points, standardized units).
    """

    name = "lpla"
    label = "LpLA"
    levels = ("reference", "shadow", "audit")
    takes_p = True
    min_views = 1

    def __init__(self, p: float = 2.0, statistic: str = "log", density: str = "gaussian",
                 aggregation: str = "sum", knowledge: str = "auto", standardize: bool = True,
                 reference_spread: float = 2.0, reference_fpr: float = 0.1, min_std: float = 1e-6,
                 max_kde_points: int = 2048, seed: int = 0):
        _check_choice("statistic", statistic, STATISTICS)
        _check_choice("density", density, DENSITIES)
        _check_choice("aggregation", aggregation, AGGREGATIONS)
        _check_choice("knowledge", knowledge, MODES)
        if not reference_spread > 1:
            raise ValueError(f"reference_spread must be > 1, got {reference_spread}")
        if not 0 < reference_fpr < 1:
            raise ValueError(f"reference_fpr must be in (0, 1), got {reference_fpr}")
        self.p = ops.check_p(p)
        self.statistic = statistic
        self.density = density
        self.aggregation = aggregation
        self.knowledge = knowledge
        self.standardize = bool(standardize)
        self.reference_spread = float(reference_spread)
        self.reference_fpr = float(reference_fpr)
        self.min_std = float(min_std)
        self.max_kde_points = int(max_kde_points)
        self.seed = int(seed)

    # --- fitting ------------------------------------------------------------------
    def _stat(self, views, name) -> np.ndarray:
        return view_statistic(views, self.p, self.statistic, name)

    def _reference_moments(self, views, name) -> Tuple[float, float]:
        if not self.standardize:
            return 0.0, 1.0
        return mean_std(self._stat(views, name), self.min_std)

    def _aggregate(self, t: np.ndarray) -> np.ndarray:
        """Values the densities are fitted on: every view (sum) or each sample's view mean."""
        return t.reshape(-1) if self.aggregation == "sum" else t.mean(axis=1)

    def fit(self, knowledge: AttackerKnowledge) -> "LpLA":
        mode = knowledge.level if self.knowledge == "auto" else self.knowledge
        if mode == "reference":
            (target_ref,) = knowledge.require("target_reference", attack=self.name)
            source_ref = target_ref
            members, nonmembers = None, target_ref
        elif mode == "shadow":
            members, nonmembers = knowledge.require("shadow_members", "shadow_nonmembers", attack=self.name)
            source_ref, target_ref = (knowledge.require("shadow_reference", "target_reference", attack=self.name)
                                      if self.standardize else (None, None))
        else:
            members, nonmembers = knowledge.require("calibration_members", "calibration_nonmembers",
                                                    attack=self.name)
            # One encoder: any reference standardizes both sides alike.
            source_ref = target_ref = nonmembers if knowledge.target_reference is None else knowledge.target_reference
        source = self._reference_moments(source_ref, "reference")
        target = self._reference_moments(target_ref, "target_reference")
        t_in = None if members is None else (self._stat(members, "members") - source[0]) / source[1]
        t_out = (self._stat(nonmembers, "non-members") - source[0]) / source[1]
        self.mode_ = mode
        self.dim_ = knowledge.target_dim()
        self.reference_moments_ = [float(target[0]), float(target[1])]
        self._fit_densities(t_in, t_out)
        self._fit_threshold(t_in, t_out)
        return self

    def _fit_densities(self, t_in: Optional[np.ndarray], t_out: np.ndarray) -> None:
        out_values = self._aggregate(t_out)
        in_values = None if t_in is None else self._aggregate(t_in)
        self.calibration_ = None
        self.kde_in_ = self.kde_out_ = None
        if self.density == "kde":
            rng = np.random.default_rng(self.seed)
            self.kde_out_ = _subsample(out_values, self.max_kde_points, rng)
            self.kde_in_ = None if in_values is None else _subsample(in_values, self.max_kde_points, rng)
            return
        mean_out, std_out = mean_std(out_values, self.min_std)
        if in_values is None:
            mean_in, std_in = mean_out, self.reference_spread * std_out
        else:
            mean_in, std_in = mean_std(in_values, self.min_std)
        self.calibration_ = LpLACalibration(
            p=self.p, log_space=self.statistic == "log", mean_in=mean_in, std_in=std_in,
            mean_out=mean_out, std_out=std_out, ref_mean=self.reference_moments_[0],
            ref_std=self.reference_moments_[1], dim=self.dim_, aggregation=self.aggregation,
            meta={"attack": self.name, "knowledge": self.mode_, "standardized": self.standardize},
        )

    def _fit_threshold(self, t_in, t_out) -> None:
        out_scores = self._score_standardized(t_out)
        if t_in is None:
            self.threshold_ = float(np.quantile(out_scores, 1.0 - self.reference_fpr))
            return
        in_scores = self._score_standardized(t_in)
        scores = np.concatenate([in_scores, out_scores])
        labels = np.concatenate([np.ones(in_scores.size, bool), np.zeros(out_scores.size, bool)])
        self.threshold_ = best_threshold(scores, labels)

    # --- scoring ------------------------------------------------------------------
    def _score_standardized(self, t: np.ndarray) -> np.ndarray:
        """Scores from standardized statistics t (N, K), in numpy (fit-time and KDE path)."""
        values = t if self.aggregation == "sum" else t.mean(axis=1, keepdims=True)
        if self.density == "kde":
            log_out = self._kde("out").logpdf(values)
            log_in = 0.0 if self.kde_in_ is None else self._kde("in").logpdf(values)
            return (log_in - log_out).sum(axis=1)
        c = self.calibration_
        llr = (normal.logpdf(values, c.mean_in, c.std_in) - normal.logpdf(values, c.mean_out, c.std_out))
        return llr.sum(axis=1)

    def _kde(self, side: str) -> GaussianKDE1D:
        support = self.kde_in_ if side == "in" else self.kde_out_
        cached = self.__dict__.setdefault("_kde_cache", {}).get(side)
        if cached is None or cached.support.size != support.size or not np.array_equal(cached.support, support):
            cached = self._kde_cache[side] = GaussianKDE1D(support)
        return cached

    def score(self, views) -> np.ndarray:
        views = self._check(views)
        if self.calibration_ is not None:
            return self.calibration_.score(views)[1].to(torch.float64).cpu().numpy()
        ref_mean, ref_std = self.reference_moments_
        return self._score_standardized((self._stat(views, "views") - ref_mean) / ref_std)

    # --- state --------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "mode": self.mode_, "dim": self.dim_, "threshold": self.threshold_,
            "reference_moments": self.reference_moments_,
            "calibration": None if self.calibration_ is None else self.calibration_.to_dict(),
            "kde_in": None if self.kde_in_ is None else self.kde_in_.tolist(),
            "kde_out": None if self.kde_out_ is None else self.kde_out_.tolist(),
        }

    def _set_state(self, state: dict) -> None:
        self.mode_ = state["mode"]
        self.dim_ = state["dim"]
        self.threshold_ = float(state["threshold"])
        self.reference_moments_ = [float(v) for v in state["reference_moments"]]
        cal = state.get("calibration")
        self.calibration_ = None if cal is None else LpLACalibration.from_dict(cal)
        self.kde_in_ = None if state.get("kde_in") is None else np.asarray(state["kde_in"], np.float64)
        self.kde_out_ = None if state.get("kde_out") is None else np.asarray(state["kde_out"], np.float64)


class GaussianKDE1D:
    """A 1-D Gaussian KDE with Scott's bandwidth (h = std * n^(-1/5), as scipy's gaussian_kde).

    `logpdf` evaluates exactly on a grid spanning the support +- 6h once, then linearly
    interpolates (the grid step is far below h: ~1e-5 error in log density); points
    outside the grid are evaluated exactly. Scoring is then O(N) whatever the support size.
    """

    def __init__(self, support: np.ndarray, grid_size: int = 4096):
        self.support = np.asarray(support, np.float64).reshape(-1)
        self.h = float(self.support.std(ddof=1)) * self.support.size ** (-0.2)
        self.grid = np.linspace(self.support.min() - 6 * self.h, self.support.max() + 6 * self.h, grid_size)
        self.grid_logpdf = self.exact_logpdf(self.grid)

    def exact_logpdf(self, x: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
        x = np.asarray(x, np.float64).reshape(-1)
        out = np.empty(x.size)
        step = max(1, chunk // self.support.size)
        for start in range(0, x.size, step):
            z = (x[start:start + step, None] - self.support[None, :]) / self.h
            out[start:start + step] = logsumexp(-0.5 * z * z, axis=1)
        return out - math.log(self.support.size * self.h * math.sqrt(2 * math.pi))

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        flat = np.asarray(x, np.float64).reshape(-1)
        out = np.interp(flat, self.grid, self.grid_logpdf)
        outside = (flat < self.grid[0]) | (flat > self.grid[-1])
        if outside.any():
            out[outside] = self.exact_logpdf(flat[outside])
        return out.reshape(np.shape(x))


def _subsample(values: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if values.size < 2 or np.ptp(values) == 0:
        raise ValueError("KDE needs at least two distinct statistic values to fit a density")
    if values.size <= limit:
        return values.copy()
    return rng.choice(values, size=limit, replace=False)


class LpLAPerExample:
    """Per-example LpLA with several shadow encoders (LiRA-style; beyond the paper).

    Each shadow encoder s was trained on a subset of the candidate samples (in_mask[s, i]
    is True when sample i was one of its members). For each sample i, the view-mean
    statistic m = mean_k t_k across the shadows where it was a member gives a Gaussian
    N(mu_in[i], sd_in[i]^2), and across those where it was not, N(mu_out[i], sd_out[i]^2).
    The target's score for sample i is log N(m_i; in) - log N(m_i; out).

    Few shadows make per-sample variances unreliable: a sample with fewer than
    `min_per_side` observations on a side uses the global (pooled) standard deviation of
    that side, and with `fixed_variance=True` every sample does (LiRA's recommendation
    for few shadows). A sample never seen on one side takes the other side's mean shifted
    by the global in-out offset; a sample seen on neither side is an error.

    With standardize=True, each encoder's statistic is standardized by its own reference
    non-members (`shadow_reference` in fit, one per shadow; `target_reference` in fit,
    for the target), so shadows and target with different norm scales are comparable.
    """

    name = "lpla-per-example"
    label = "LpLA per example"
    levels = ("shadow",)
    takes_p = True

    def __init__(self, p: float = 2.0, statistic: str = "log", standardize: bool = False,
                 fixed_variance: bool = False, min_per_side: int = 4, min_std: float = 1e-6):
        _check_choice("statistic", statistic, STATISTICS)
        self.p = ops.check_p(p)
        self.statistic = statistic
        self.standardize = bool(standardize)
        self.fixed_variance = bool(fixed_variance)
        self.min_per_side = int(min_per_side)
        self.min_std = float(min_std)

    def get_params(self) -> dict:
        return init_params(self)

    def _moments_of(self, views, name) -> Tuple[float, float]:
        return mean_std(view_statistic(as_views(views, name), self.p, self.statistic, name), self.min_std)

    def fit(self, shadow_views: Sequence, in_mask, shadow_reference: Optional[Sequence] = None,
            target_reference=None) -> "LpLAPerExample":
        """shadow_views: one (N, K, D) tensor per shadow encoder, the same N candidates in
        the same order; in_mask: (S, N) bool."""
        if isinstance(shadow_views, torch.Tensor) or not len(shadow_views):
            raise ValueError("shadow_views must be a non-empty list of (N, K, D) tensors, one per shadow encoder")
        views = [as_views(v, f"shadow_views[{s}]") for s, v in enumerate(shadow_views)]
        if len({int(v.shape[0]) for v in views}) != 1:
            raise ValueError(f"every shadow_views[s] must hold the same N candidates, got N={[v.shape[0] for v in views]}")
        norms = np.stack([view_statistic(v, self.p, "norm") for v in views])
        shadow_moments = target_moments = None
        if self.standardize:
            if shadow_reference is None or target_reference is None or len(shadow_reference) != len(views):
                raise ValueError("standardize=True needs shadow_reference (one per shadow) and target_reference")
            shadow_moments = [self._moments_of(r, f"shadow_reference[{s}]") for s, r in enumerate(shadow_reference)]
            target_moments = self._moments_of(target_reference, "target_reference")
        self.fit_norms(norms, in_mask, shadow_moments, target_moments)
        self.dim_ = int(views[0].shape[-1])
        return self

    def fit_norms(self, shadow_norms, in_mask, shadow_moments: Optional[Sequence] = None,
                  target_moments: Optional[Sequence] = None) -> "LpLAPerExample":
        """shadow_norms: (S, N, K) ||z||_p (not logged) of the candidates under each shadow;
        shadow_moments / target_moments: optional (mean, std) of each shadow's / the
        target's reference statistic, for standardization."""
        norms = np.asarray(shadow_norms, dtype=np.float64)
        mask = np.asarray(in_mask, dtype=bool)
        if norms.ndim == 2:
            norms = norms[:, :, None]
        if norms.ndim != 3 or mask.shape != norms.shape[:2]:
            raise ValueError(f"shadow_norms must be (S, N, K) and in_mask (S, N); got {norms.shape} and {mask.shape}")
        if not np.isfinite(norms).all():
            raise ValueError("shadow_norms contain NaN or Inf")
        stat = _transform(norms, self.statistic, "shadow_norms")
        if shadow_moments is not None:
            moments = np.asarray(shadow_moments, dtype=np.float64).reshape(-1, 2)
            stat = (stat - moments[:, 0].reshape(-1, 1, 1)) / moments[:, 1].reshape(-1, 1, 1)
        m = stat.mean(axis=2)  # (S, N)
        self.mu_in_, self.sd_in_, n_in = _masked_moments(m, mask)
        self.mu_out_, self.sd_out_, n_out = _masked_moments(m, ~mask)
        if ((n_in == 0) & (n_out == 0)).any():
            raise ValueError("some candidate samples have no shadow observations at all")
        if not n_in.any() or not n_out.any():
            raise ValueError("in_mask must mark some (shadow, sample) pairs as members and some as non-members")
        offset = float(m[mask].mean() - m[~mask].mean())
        self.mu_in_ = np.where(n_in > 0, self.mu_in_, self.mu_out_ + offset)
        self.mu_out_ = np.where(n_out > 0, self.mu_out_, self.mu_in_ - offset)
        global_in = max(float(np.std(m[mask] - self.mu_in_[np.nonzero(mask)[1]])), self.min_std)
        global_out = max(float(np.std(m[~mask] - self.mu_out_[np.nonzero(~mask)[1]])), self.min_std)
        few_in = self.fixed_variance | (n_in < self.min_per_side)
        few_out = self.fixed_variance | (n_out < self.min_per_side)
        self.sd_in_ = np.where(few_in, global_in, np.maximum(self.sd_in_, self.min_std))
        self.sd_out_ = np.where(few_out, global_out, np.maximum(self.sd_out_, self.min_std))
        self.target_moments_ = [0.0, 1.0] if target_moments is None else [float(v) for v in target_moments]
        self.dim_ = None
        return self

    def score(self, views) -> np.ndarray:
        """Scores (N,) of the target's views (N, K, D) of the same N candidates."""
        views = check_views(views, "views", 1, self.dim_)
        return self.score_norms(ops.lp_norm(views, self.p).to(torch.float64).numpy())

    def score_norms(self, norms) -> np.ndarray:
        """Scores (N,) from the target's per-view norms (N, K) (or (N,))."""
        if not hasattr(self, "mu_in_"):
            raise RuntimeError("LpLAPerExample is not fitted; call fit first")
        norms = np.asarray(norms, dtype=np.float64)
        norms = norms[:, None] if norms.ndim == 1 else norms
        if norms.shape[0] != self.mu_in_.size:
            raise ValueError(f"expected the {self.mu_in_.size} candidates of fit, got {norms.shape[0]}")
        stat = (_transform(norms, self.statistic, "norms") - self.target_moments_[0]) / self.target_moments_[1]
        m = stat.mean(axis=1)
        return normal.logpdf(m, self.mu_in_, self.sd_in_) - normal.logpdf(m, self.mu_out_, self.sd_out_)

    def to_dict(self) -> dict:
        state = {k: np.asarray(getattr(self, k)).tolist() for k in ("mu_in_", "sd_in_", "mu_out_", "sd_out_")}
        state.update(target_moments_=self.target_moments_, dim_=self.dim_)
        return {"attack": self.name, "params": self.get_params(), "state": state}

    @classmethod
    def from_dict(cls, d: dict) -> "LpLAPerExample":
        if not isinstance(d, dict) or d.get("attack") != cls.name:
            raise ValueError(f"not a saved {cls.name!r} attack")
        attack = cls(**d["params"])
        for k, v in d["state"].items():
            setattr(attack, k, np.asarray(v, np.float64) if k in ("mu_in_", "sd_in_", "mu_out_", "sd_out_") else v)
        return attack


def _masked_moments(m: np.ndarray, mask: np.ndarray):
    """Per-sample mean, std (ddof=0) and count of m (S, N) over the shadows where mask."""
    count = mask.sum(axis=0)
    safe = np.maximum(count, 1)
    mean = np.where(mask, m, 0.0).sum(axis=0) / safe
    var = np.where(mask, (m - mean) ** 2, 0.0).sum(axis=0) / safe
    return mean, np.sqrt(var), count
