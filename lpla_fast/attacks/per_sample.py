"""What LiRA and RMIA share: a statistic measured under every encoder, each encoder's
scale, and the direction of membership learned from the reference encoders.

Every encoder (each reference, and the target) measures the statistic on the candidates;
with standardize, each encoder's values are standardized by that encoder's population
(its own known non-members), so encoders with different norm scales become comparable
("auto": whenever the knowledge holds a population).
For the per-view "lpla" statistic, `views` chooses LiRA's augmentation practice:
"per-view" keeps one column per view (the same K views are queried on every encoder, so
view k has its own per-sample distribution; LiRA, with many references) and "mean" (the
default) averages the view statistics first: a sample's views share one norm level, and
with few references the per-view means are noisy.
"""

from __future__ import annotations

import base64
from typing import Optional, Tuple

import numpy as np
from torch import Tensor

from . import gaussian
from .base import Attack, check_views
from .references import LEVEL, ReferenceKnowledge
from .statistics import bank_embeddings, check_statistic, sample_statistic
from .. import ops

VIEW_MODES = ("mean", "per-view")


def learn_direction(obs: np.ndarray, in_mask: np.ndarray, min_std: float) -> np.ndarray:
    """Unit vector w (V,) along which the reference encoders' members lie, learned from labels.

    obs: (R, N, V) statistic of the candidates under each reference. Each candidate's mean
    over the references is removed first (its own level), then w is the linear
    discriminant Sigma^-1 (mean_in - mean_out) of what is left; for V = 1 it is the sign.
    """
    centred = obs - obs.mean(axis=0, keepdims=True)
    delta = centred[in_mask].mean(axis=0) - centred[~in_mask].mean(axis=0)
    flat = centred.reshape(-1, obs.shape[-1])
    sigma = gaussian.covariance(flat, flat.shape[0] - 1, min_std, diagonal=False)
    w = np.linalg.solve(sigma, delta)
    size = float(np.linalg.norm(w))
    if not size > 0:
        raise ValueError("the reference encoders' members and non-members do not differ at all in this statistic; "
                         "its direction cannot be learned")
    return w / size


def _encode_bank(bank: Optional[np.ndarray]):
    if bank is None:
        return None
    return {"shape": list(bank.shape), "float32": base64.b64encode(bank.astype(np.float32).tobytes()).decode("ascii")}


def _decode_bank(state):
    if state is None:
        return None
    raw = np.frombuffer(base64.b64decode(state["float32"]), dtype=np.float32)
    return raw.reshape(state["shape"]).copy()


class ReferenceAttack(Attack):
    """Base of the attacks fitted on ReferenceKnowledge; score(target_views) takes the
    target's (N, K, D) views of the fit's N candidates, in the same order."""

    levels = (LEVEL,)
    takes_p = True

    def _init_statistic(self, statistic: str, p: float, log: bool, neighbours: int, views: str,
                        standardize, min_std: float) -> None:
        info = check_statistic(statistic)
        if views not in VIEW_MODES:
            raise ValueError(f"views must be one of {VIEW_MODES}, got {views!r}")
        if int(neighbours) != neighbours or neighbours < 1:
            raise ValueError(f"neighbours must be an integer >= 1, got {neighbours}")
        if not min_std > 0:
            raise ValueError(f"min_std must be > 0, got {min_std}")
        self.statistic, self.p, self.log = statistic, ops.check_p(p), bool(log)
        self.neighbours, self.views = int(neighbours), views
        if standardize not in ("auto", True, False):
            raise ValueError(f"standardize must be 'auto', True or False, got {standardize!r}")
        self.standardize, self.min_std = standardize, float(min_std)
        self.min_views = info.min_views
        self._info = info

    # --- the statistic under each encoder ----------------------------------------------------
    def _values(self, views: Tensor, bank: Optional[np.ndarray], label: str, leave_one_out: bool = False):
        values = sample_statistic(self.statistic, views, self.p, self.log, self.neighbours, bank,
                                  leave_one_out, label)
        if self._info.per_view and self.views == "mean":
            values = values.mean(axis=1, keepdims=True)
        return values

    def _moments(self, values: np.ndarray) -> np.ndarray:
        """(2, V): mean and std of an encoder's population values; one scale for all the
        columns of a per-view statistic (they are draws of the same quantity)."""
        if self._info.per_view:
            mean = np.full(values.shape[1], values.mean())
            std = np.full(values.shape[1], values.std(ddof=1) if values.size > 1 else 0.0)
        else:
            mean = values.mean(axis=0)
            std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1])
        return np.stack([mean, np.maximum(std, self.min_std)])

    def _under_encoder(self, views: Optional[Tensor], population: Optional[Tensor], bank, label: str,
                       standardize: bool):
        """One encoder's statistic of the candidates and of its population (either may be
        None), standardized by that population when asked, and the (2, V) moments used."""
        values = None if views is None else self._values(views, bank, label)
        pop = None if population is None else self._values(population, bank, f"population of {label}", True)
        size = (values if values is not None else pop).shape[1]
        moments = self._moments(pop) if standardize else np.stack([np.zeros(size), np.ones(size)])
        return [None if v is None else (v - moments[0]) / moments[1] for v in (values, pop)] + [moments]

    def _measure(self, knowledge, online: bool, need_population: bool) -> Tuple[np.ndarray, ...]:
        """Statistic of the candidates under each reference (R, N, V), and, when the
        population is used, of the population under each reference (R, M, V) and under
        the target (M, V). Sets the shared fitted state."""
        if not isinstance(knowledge, ReferenceKnowledge):
            raise TypeError(f"{self.name} is fitted on a ReferenceKnowledge (reference encoders), "
                            f"got {type(knowledge).__name__}")
        if knowledge.n_views < self.min_views:
            raise ValueError(f"statistic {self.statistic!r} needs K >= {self.min_views} views per sample; "
                             f"the reference views have K={knowledge.n_views}")
        standardize = knowledge.has_population if self.standardize == "auto" else self.standardize
        use_population = need_population or standardize
        if (use_population or self._info.needs_bank) and not knowledge.has_population:
            why = ("its neighbour bank" if self._info.needs_bank else
                   "each encoder's scale (standardize=True)" if standardize else "population samples")
            raise ValueError(f"{self.name} with statistic {self.statistic!r} needs population_views and "
                             f"target_population_views for {why}")
        knowledge.check_sides(online, self.name)
        obs, pop = [], []
        for r, views in enumerate(knowledge.reference_views):
            bank = bank_embeddings(knowledge.population_views[r]) if self._info.needs_bank else None
            population = knowledge.population_views[r] if use_population else None
            values, pop_values, _ = self._under_encoder(views, population, bank, f"reference_views[{r}]",
                                                        standardize)
            obs.append(values)
            pop.append(pop_values)
        self.n_candidates_, self.n_views_, self.dim_ = knowledge.n_candidates, knowledge.n_views, knowledge.dim
        self.standardized_ = bool(standardize)
        self.bank_ = bank_embeddings(knowledge.target_population_views) if self._info.needs_bank else None
        self.target_moments_ = np.stack([np.zeros(obs[0].shape[1]), np.ones(obs[0].shape[1])])
        target_pop = None
        if use_population:
            _, target_pop, self.target_moments_ = self._under_encoder(
                None, knowledge.target_population_views, self.bank_, "the target", standardize)
        return np.stack(obs), (np.stack(pop) if use_population else None), target_pop

    def _target(self, views) -> np.ndarray:
        """(N, V) statistic of the target's views of the candidates, standardized like in fit."""
        self._check_fitted()
        views = check_views(views, "target views", self.min_views, self.dim_)
        if views.shape[0] != self.n_candidates_ or views.shape[1] != self.n_views_:
            raise ValueError(f"target views must be the fit's {self.n_candidates_} candidates with K={self.n_views_} "
                             f"views each (same order); got N={views.shape[0]}, K={views.shape[1]}")
        values = self._values(views, self.bank_, "target views")
        return (values - self.target_moments_[0]) / self.target_moments_[1]

    # --- state ---------------------------------------------------------------------------------
    def _shared_state(self) -> dict:
        return {"n_candidates": self.n_candidates_, "n_views": self.n_views_, "dim": self.dim_,
                "threshold": self.threshold_, "standardized": self.standardized_,
                "target_moments": gaussian.to_list(self.target_moments_), "bank": _encode_bank(self.bank_)}

    def _set_shared_state(self, state: dict) -> None:
        self.n_candidates_, self.n_views_ = int(state["n_candidates"]), int(state["n_views"])
        self.dim_ = int(state["dim"])
        self.threshold_ = float(state["threshold"])
        self.standardized_ = bool(state["standardized"])
        self.target_moments_ = gaussian.from_list(state["target_moments"])
        self.bank_ = _decode_bank(state["bank"])
