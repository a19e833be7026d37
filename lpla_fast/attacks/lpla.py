"""LpLA, the embedding Lp-norm likelihood attack.

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
- characteristic: which "distribution characteristic" of the K view norms is modelled.
  "view" is the per-view statistic above. The others describe each sample as a
  whole (see `statistics.norm_characteristic`) and get member / non-member Gaussians over
  samples, multivariate with a full covariance, score log N_in(c) - log N_out(c):
  "mean_spread" (mean and std of the K view statistics, jointly: the views share one norm
  level, so they are not independent draws), "resultant" (||mean_k z_k||_p / mean_k
  ||z_k||_p, 1 when the views agree), "multi_p" (the mean view statistic at p = 1, 2,
  inf) and "joint" (all of them that exist at the query budget in one vector: the level,
  with K >= 2 its spread and the resultant length, and the level at the other p). Each
  coordinate is standardized by the encoder's reference non-members; with reference-only
  knowledge the score is the two-sided Mahalanobis distance from them. "joint" has one
  Ledoit-Wolf-shrunk covariance shared by both classes, so its score is linear in the
  vector (a linear discriminant: the attacker's data weighs each characteristic, `weights_`);
  the others keep one covariance per class.
  `aggregation` applies to "view" only; KDE to one-dimensional characteristics only.
  "auto" (the default) is "joint"; "select" picks the characteristic by cross-validation on
  the attacker's labelled data; "budget" is the earlier default, fixed by our own study
  (see CHOOSERS below; README: What is the paper's and what is ours).
- Per-sample calibration against reference encoders (LiRA, RMIA) is in `lira` / `rmia`.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import norm as normal

from .. import ops
from .calibration import AGGREGATIONS, CHARACTERISTICS, LpLACalibration  # noqa: F401 (re-exported)
from . import gaussian
from .base import LEVELS, Attack, AttackerKnowledge, LabelledEncoder, best_threshold
from .statistics import STATISTICS as SAMPLE_STATISTICS
from .statistics import characteristic_columns, norm_characteristic

STATISTICS = ("log", "norm")
DENSITIES = ("gaussian", "kde")
MODES = ("auto",) + LEVELS
# Names that resolve to one of CHARACTERISTICS at fit time (the fitted attack's chosen_):
# "auto" (the default): "joint", every characteristic that exists at the query budget in one
#     likelihood, its weights learned from the attacker's own data ("view" with density="kde",
#     which is one-dimensional). Until this release "auto" meant what "budget" means now.
# "select": the characteristic with the best held-out AUC in stratified CV_FOLDS-fold
#     cross-validation on the attacker's labelled members and non-members ("joint" with
#     reference-only knowledge, which holds no labels to choose by).
# "budget": the earlier default, fixed by our own study's ablation: the resultant length with
#     K >= 2 views, the vector over p with one view (BUDGET_CHOICE).
AUTO, SELECT, BUDGET = "auto", "select", "budget"
CHOOSERS = (AUTO, SELECT, BUDGET)
BUDGET_CHOICE = {"several_views": "resultant", "one_view": "multi_p"}
CV_FOLDS = 5
ONE_DIMENSIONAL = ("view", "resultant")  # what density="kde" can model


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
        characteristic: one of CHARACTERISTICS ("view", "mean_spread", "resultant", "multi_p",
            "joint") or of CHOOSERS ("auto", the default, = "joint"; "select"; "budget"): see
            the module docstring.
        max_kde_points: KDE support size (a seeded subsample beyond it).
        seed: seed of that subsample.

    Fitted: chosen_ (the characteristic modelled, a chooser resolved), columns_ (the names of
    its values, `statistics.characteristic_columns`), selection_ ("select": the held-out AUC of
    every candidate; else None), weights_ ("joint" with labelled knowledge: {column: weight}
    of the linear score in standardized units; else None), calibration_ (the LpLACalibration
    `lpla score` applies, for every characteristic with density="gaussian"; None with KDE),
    gaussians_ (the in / out means and covariances of the vector characteristics), mode_,
    dim_, threshold_, reference_moments_, kde_in_ / kde_out_ (KDE support points,
    standardized units). to_dict() saves all of them.
    """

    name = "lpla"
    label = "LpLA"
    levels = ("reference", "shadow", "audit")
    takes_p = True
    min_views = 1

    def __init__(self, p: float = 2.0, statistic: str = "log", density: str = "gaussian",
                 aggregation: str = "sum", knowledge: str = "auto", standardize: bool = True,
                 reference_spread: float = 2.0, reference_fpr: float = 0.1, min_std: float = 1e-6,
                 max_kde_points: int = 2048, seed: int = 0, characteristic: str = AUTO):
        _check_choice("statistic", statistic, STATISTICS)
        _check_choice("density", density, DENSITIES)
        _check_choice("aggregation", aggregation, AGGREGATIONS)
        _check_choice("knowledge", knowledge, MODES)
        _check_choice("characteristic", characteristic, CHARACTERISTICS + CHOOSERS)
        if density == "kde" and characteristic not in ONE_DIMENSIONAL + CHOOSERS:
            raise ValueError(f"density='kde' is one-dimensional; characteristic {characteristic!r} is a vector")
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
        self.characteristic = characteristic
        self.min_views = 1 if characteristic in ("view", "joint") + CHOOSERS else \
            SAMPLE_STATISTICS[characteristic].min_views

    # --- fitting ------------------------------------------------------------------
    @property
    def _char(self) -> str:
        """The characteristic in use: the fitted choice of a chooser, else the one asked for."""
        return getattr(self, "chosen_", self.characteristic)

    def _candidates(self, k: int) -> Tuple[str, ...]:
        """The characteristics that can be modelled with k views (and this density)."""
        fits = [c for c in CHARACTERISTICS if k >= _min_views(c)]
        return tuple(c for c in fits if c in ONE_DIMENSIONAL) if self.density == "kde" else tuple(fits)

    def _choose(self, knowledge: AttackerKnowledge, mode: str, k: int) -> str:
        """The characteristic to model: the one asked for, or a chooser's choice (sets selection_)."""
        self.selection_ = None
        if self.characteristic not in CHOOSERS:
            return self.characteristic
        if self.characteristic == BUDGET:
            choice = BUDGET_CHOICE["several_views" if k >= 2 else "one_view"]
            return "view" if choice not in self._candidates(k) else choice
        if self.characteristic == AUTO or mode == "reference":  # SELECT has no labels to choose by there
            return "joint" if "joint" in self._candidates(k) else "view"
        self.selection_ = self._cross_validate(knowledge, mode, self._candidates(k))
        return max(self.selection_, key=self.selection_.get)  # the first of equals: CHARACTERISTICS order

    def _cross_validate(self, knowledge: AttackerKnowledge, mode: str, candidates) -> dict:
        """{characteristic: mean held-out AUC} over stratified CV_FOLDS-fold cross-validation on
        the labelled members and non-members (of every shadow encoder: the folds are stratified by
        encoder too), each fold fitted exactly as `fit` would; a shadow's held-out samples are
        standardized with its own encoder's reference."""
        from sklearn.model_selection import StratifiedKFold

        from ..metrics import roc_auc

        encoders = knowledge.labelled_encoders(self.name, mode)
        views = torch.cat([v for e in encoders for v in (e.members, e.nonmembers)])
        labels = np.concatenate([np.r_[np.ones(len(e.members), bool), np.zeros(len(e.nonmembers), bool)]
                                 for e in encoders])
        owner = np.concatenate([np.full(len(e.members) + len(e.nonmembers), i) for i, e in enumerate(encoders)])
        strata = 2 * owner + labels
        folds = min(CV_FOLDS, int(np.bincount(strata, minlength=2 * len(encoders)).min()))
        if folds < 2:
            raise ValueError(f"characteristic {SELECT!r} needs at least 2 labelled members and non-members to "
                             f"choose by cross-validation; pass a characteristic of {CHARACTERISTICS}")
        params = dict(self.get_params(), knowledge=mode)
        aucs = {c: [] for c in candidates}
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=self.seed).split(strata, strata):
            fold = self._fold_knowledge(knowledge, mode, encoders, views, labels, owner, train)
            for c in candidates:
                attack = LpLA(**dict(params, characteristic=c)).fit(fold)
                if mode == "shadow":
                    scores = np.empty(len(test))
                    for i, e in enumerate(encoders):
                        rows = owner[test] == i
                        scores[rows] = attack._score_against(views[test[rows]], e.reference)
                else:
                    scores = attack.score(views[test])
                aucs[c].append(roc_auc(scores, labels[test]))
        return {c: float(np.mean(v)) for c, v in aucs.items()}

    @staticmethod
    def _fold_knowledge(knowledge, mode, encoders, views, labels, owner, rows) -> AttackerKnowledge:
        """The knowledge of one cross-validation fold: each labelled encoder's samples in `rows`."""
        parts = [LabelledEncoder(views[rows[(owner[rows] == i) & labels[rows]]],
                                 views[rows[(owner[rows] == i) & ~labels[rows]]], e.reference)
                 for i, e in enumerate(encoders)]
        if mode == "shadow":
            return AttackerKnowledge(level=mode, allow_different_dims=True, shadow_members=parts[0].members,
                                     shadow_nonmembers=parts[0].nonmembers, shadow_reference=parts[0].reference,
                                     target_reference=parts[0].reference, more_shadows=tuple(parts[1:]))
        return AttackerKnowledge(level=mode, allow_different_dims=True, target_reference=knowledge.target_reference,
                                 calibration_members=parts[0].members, calibration_nonmembers=parts[0].nonmembers)

    def _score_against(self, views, reference) -> np.ndarray:
        """Scores of another encoder's views, standardized with that encoder's own reference."""
        moments = self._reference_moments(reference, "reference")
        return self._score_standardized(self._standardized(self._stat(views, "views"), moments))

    def _stat(self, views, name) -> np.ndarray:
        """(N, K) view statistics, or (N, V) values of another characteristic."""
        need = _min_views(self._char)
        if views.shape[1] < need:
            raise ValueError(f"characteristic {self._char!r} needs K >= {need} views per "
                             f"sample; the {name} have K={views.shape[1]}")
        if self._char == "view":
            return view_statistic(views, self.p, self.statistic, name)
        return norm_characteristic(views, self._char, self.p, self.statistic == "log", name)

    def _reference_moments(self, views, name):
        """(mean, std) of the reference's statistic: floats for "view", else per coordinate."""
        if not self.standardize:
            return 0.0, 1.0  # broadcast over a vector characteristic's coordinates
        if self._char == "view":
            return mean_std(self._stat(views, name), self.min_std)
        values = self._stat(views, name)
        return values.mean(axis=0).tolist(), np.maximum(values.std(axis=0, ddof=1), self.min_std).tolist()

    def _standardized(self, values: np.ndarray, moments) -> np.ndarray:
        return (values - np.asarray(moments[0])) / np.asarray(moments[1])

    def _aggregate(self, t: np.ndarray) -> np.ndarray:
        """Values the densities are fitted on: every view (sum) or each sample's view mean."""
        return t.reshape(-1) if self.aggregation == "sum" else t.mean(axis=1)

    def fit(self, knowledge: AttackerKnowledge) -> "LpLA":
        mode = knowledge.level if self.knowledge == "auto" else self.knowledge
        known = [getattr(knowledge, n) for n in ("shadow_members", "calibration_members", "target_reference")]
        k = min(int(v.shape[1]) for v in known if v is not None)
        self.chosen_ = self._choose(knowledge, mode, k)
        self.columns_ = list(characteristic_columns(self.chosen_, self.p, k))
        if mode == "reference":
            (target_ref,) = knowledge.require("target_reference", attack=self.name)
            t_in, t_out = None, self._standardized(self._stat(target_ref, "non-members"),
                                                   self._reference_moments(target_ref, "reference"))
        else:
            encoders = knowledge.labelled_encoders(self.name, mode)
            if mode == "shadow":
                target_ref = (knowledge.require("shadow_reference", "target_reference", attack=self.name)[1]
                              if self.standardize else None)
            else:  # one encoder: any reference standardizes both sides alike
                target_ref = encoders[0].nonmembers if encoders[0].reference is None else encoders[0].reference
                encoders = [LabelledEncoder(encoders[0].members, encoders[0].nonmembers, target_ref)]
            # Every labelled encoder's statistics, each standardized with its own reference.
            sources = [self._reference_moments(e.reference, "reference") for e in encoders]
            t_in = np.concatenate([self._standardized(self._stat(e.members, "members"), m)
                                   for e, m in zip(encoders, sources)])
            t_out = np.concatenate([self._standardized(self._stat(e.nonmembers, "non-members"), m)
                                    for e, m in zip(encoders, sources)])
        target = self._reference_moments(target_ref, "target_reference")
        self.mode_ = mode
        self.dim_ = knowledge.target_dim()
        self.reference_moments_ = [target[0], target[1]]
        self._fit_densities(t_in, t_out)
        self._fit_threshold(t_in, t_out)
        return self

    def _fit_densities(self, t_in: Optional[np.ndarray], t_out: np.ndarray) -> None:
        out_values = self._aggregate(t_out)
        in_values = None if t_in is None else self._aggregate(t_in)
        self.calibration_ = self.gaussians_ = self.weights_ = None
        self.kde_in_ = self.kde_out_ = None
        if self.density == "kde":
            rng = np.random.default_rng(self.seed)
            self.kde_out_ = _subsample(out_values, self.max_kde_points, rng)
            self.kde_in_ = None if in_values is None else _subsample(in_values, self.max_kde_points, rng)
            return
        if self._char != "view":
            self._fit_gaussians(t_in, t_out)
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

    def _fit_gaussians(self, t_in: Optional[np.ndarray], t_out: np.ndarray) -> None:
        """Member / non-member Gaussians of a characteristic vector (full covariance; for
        "joint" Ledoit-Wolf-shrunk, and with labels one shared by both classes)."""
        joint = self._char == "joint"
        if t_in is None:  # reference-only: the in-density is the out-density widened
            mean_out, cov_out = gaussian.fit(t_out, self.min_std, shrink=joint)
            mean_in, cov_in = mean_out, self.reference_spread ** 2 * cov_out
        elif joint:  # one shared covariance: the score is linear, w . t + const
            (mean_in, mean_out), cov_in = gaussian.fit_shared([t_in, t_out], self.min_std)
            cov_out = cov_in
            self.weights_ = dict(zip(self.columns_, np.linalg.solve(cov_in, mean_in - mean_out).tolist()))
        else:
            mean_out, cov_out = gaussian.fit(t_out, self.min_std)
            mean_in, cov_in = gaussian.fit(t_in, self.min_std)
        self.gaussians_ = {"mean_in": mean_in, "cov_in": cov_in, "mean_out": mean_out, "cov_out": cov_out}
        center, scale = (np.broadcast_to(np.asarray(m, np.float64), mean_out.shape) for m in self.reference_moments_)
        self.calibration_ = LpLACalibration(
            p=self.p, log_space=self.statistic == "log", mean_in=0.0, std_in=1.0, mean_out=0.0, std_out=1.0,
            dim=self.dim_, characteristic=self._char,
            gaussians={k: gaussian.to_list(v) for k, v in self.gaussians_.items()},
            ref_center=tuple(float(x) for x in center), ref_scale=tuple(float(x) for x in scale),
            meta={"attack": self.name, "knowledge": self.mode_, "standardized": self.standardize,
                  "columns": self.columns_},
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
        if self.gaussians_ is not None and self._char != "view":
            g = self.gaussians_
            return gaussian.log_ratio(t, g["mean_in"], g["cov_in"], g["mean_out"], g["cov_out"])
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
        return self._score_standardized(self._standardized(self._stat(views, "views"), self.reference_moments_))

    # --- state --------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "characteristic": self.chosen_, "selection": self.selection_, "columns": self.columns_,
            "weights": self.weights_,
            "mode": self.mode_, "dim": self.dim_, "threshold": self.threshold_,
            "reference_moments": self.reference_moments_,
            "calibration": None if self.calibration_ is None else self.calibration_.to_dict(),
            "gaussians": (None if self.gaussians_ is None
                          else {k: gaussian.to_list(v) for k, v in self.gaussians_.items()}),
            "kde_in": None if self.kde_in_ is None else self.kde_in_.tolist(),
            "kde_out": None if self.kde_out_ is None else self.kde_out_.tolist(),
        }

    def _set_state(self, state: dict) -> None:
        self.chosen_ = state.get("characteristic", self.characteristic)
        self.selection_ = state.get("selection")
        self.columns_ = state.get("columns")
        self.weights_ = state.get("weights")
        self.mode_ = state["mode"]
        self.dim_ = state["dim"]
        self.threshold_ = float(state["threshold"])
        self.reference_moments_ = [v if isinstance(v, list) else float(v) for v in state["reference_moments"]]
        saved = state.get("gaussians")
        self.gaussians_ = None if saved is None else {k: gaussian.from_list(v) for k, v in saved.items()}
        cal = state.get("calibration")
        self.calibration_ = None if cal is None else LpLACalibration.from_dict(cal)
        self.kde_in_ = None if state.get("kde_in") is None else np.asarray(state["kde_in"], np.float64)
        self.kde_out_ = None if state.get("kde_out") is None else np.asarray(state["kde_out"], np.float64)


def _min_views(characteristic: str) -> int:
    return 1 if characteristic in ("view", "joint") else SAMPLE_STATISTICS[characteristic].min_views


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
