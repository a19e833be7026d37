"""Norm threshold: the mean view norm alone, no likelihood (an ablation of LpLA).

The raw statistic is (1/K) sum_k ||z_k||_p. With labelled data (shadow or audit) its
direction and threshold are learned; with standardize=True it is standardized with each
encoder's reference non-members first (shadow_reference for the shadow's calibration data,
target_reference for the target), so the learned threshold transfers like LpLA's. With
reference non-members only, the direction cannot be learned and the score is two-sided:
|mean norm - reference mean| / reference std, as in LpLA's reference-only mode.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .. import ops
from .base import Attack, AttackerKnowledge, fit_orientation
from .lpla import mean_std, view_statistic


class NormThreshold(Attack):
    """Threshold on the mean view Lp-norm.

    Fitted: mode_, sign_ (+1/-1, or 0 for the two-sided reference-only score),
    threshold_, reference_moments_ (mean, std of the target's reference mean norms), dim_.
    """

    name = "norm"
    label = "Norm threshold"
    levels = ("reference", "shadow", "audit")
    takes_p = True

    def __init__(self, p: float = 2.0, standardize: bool = True, reference_fpr: float = 0.1):
        self.p = ops.check_p(p)
        self.standardize = bool(standardize)
        self.reference_fpr = float(reference_fpr)

    def _mean_norm(self, views) -> np.ndarray:
        return view_statistic(views, self.p, "norm").mean(axis=1)

    def _moments(self, views) -> Tuple[float, float]:
        if views is None:
            return 0.0, 1.0
        return mean_std(self._mean_norm(views), min_std=1e-12)

    def fit(self, knowledge: AttackerKnowledge) -> "NormThreshold":
        self.mode_ = knowledge.level
        self.dim_ = knowledge.target_dim()
        if knowledge.level == "reference":
            (target_ref,) = knowledge.require("target_reference", attack=self.name)
            self.reference_moments_ = list(self._moments(target_ref))
            self.sign_ = 0.0
            self.threshold_ = float(np.quantile(self._oriented(self._mean_norm(target_ref)), 1 - self.reference_fpr))
            return self
        encoders = knowledge.labelled_encoders(self.name)
        if knowledge.level == "shadow" and self.standardize:
            (target_ref,) = knowledge.require("shadow_reference", "target_reference", attack=self.name)[1:]
        else:
            # Audit: one encoder, the same standardization on both sides.
            target_ref = knowledge.target_reference if self.standardize else None
        self.reference_moments_ = list(self._moments(target_ref))

        def standardized(views, reference):  # each labelled encoder by its own reference
            source = self._moments(reference if self.standardize else None)
            return (self._mean_norm(views) - source[0]) / source[1]

        self.sign_, self.threshold_ = fit_orientation(
            np.concatenate([standardized(e.members, e.reference) for e in encoders]),
            np.concatenate([standardized(e.nonmembers, e.reference) for e in encoders]))
        return self

    def _oriented(self, mean_norm: np.ndarray) -> np.ndarray:
        t = (mean_norm - self.reference_moments_[0]) / self.reference_moments_[1]
        return np.abs(t) if self.sign_ == 0 else self.sign_ * t

    def score(self, views) -> np.ndarray:
        return self._oriented(self._mean_norm(self._check(views)))

    def _state(self) -> dict:
        return {"mode": self.mode_, "dim": self.dim_, "sign": self.sign_, "threshold": self.threshold_,
                "reference_moments": self.reference_moments_}

    def _set_state(self, state: dict) -> None:
        self.mode_, self.dim_ = state["mode"], state["dim"]
        self.sign_, self.threshold_ = float(state["sign"]), float(state["threshold"])
        self.reference_moments_ = [float(v) for v in state["reference_moments"]]
