"""What every attack shares: the attacker's knowledge, input checks, direction and threshold.

Every attack is an estimator: configuration in `__init__`, `fit(knowledge)` returning
self, learned state in attributes ending in `_`, `score(views)` returning float64 scores
where larger means more likely a member, and `to_dict()` / `from_dict(d)` with JSON-able
state. The direction of a raw statistic is always learned from data with known labels.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import metrics
from ..fileio import encode_float
from ..validation import as_views, check_same_dim

LEVELS = ("reference", "shadow", "audit")
_SHADOW_NAMES = ("shadow_members", "shadow_nonmembers", "shadow_reference")
_TARGET_NAMES = ("target_reference", "target_training", "calibration_members", "calibration_nonmembers")


@dataclass
class LabelledEncoder:
    """One encoder whose members and non-members the attacker knows: a shadow encoder (with
    its embeddings of the reference split, `reference`) or, at the audit level, the target
    itself (its calibration sets, and its reference embeddings when given). Attacks that
    standardize a statistic do so per encoder, with that encoder's own `reference`."""

    members: Tensor
    nonmembers: Tensor
    reference: Optional[Tensor] = None

    def first_views(self, k: int) -> "LabelledEncoder":
        """The same encoder's sets cut to their first k views."""
        return LabelledEncoder(*(None if t is None else t[:, :k] for t in (self.members, self.nonmembers,
                                                                            self.reference)))


@dataclass
class AttackerKnowledge:
    """What the attacker holds, as (N, K, D) view embeddings (or None).

    level: "reference" (known non-members queried on the target), "shadow" (a shadow
        encoder trained on a member split, with a non-member split kept aside) or
        "audit" (the true training set is known).
    shadow_members / shadow_nonmembers: the shadow encoder's embeddings of its member and
        non-member splits.
    shadow_reference: the shadow encoder's embeddings of the reference split.
    more_shadows: further shadow encoders, each a LabelledEncoder (members, non-members,
        reference). Attacks at the shadow level pool every shadow's labelled samples, each
        standardized with its own encoder's reference: the direction a statistic takes varies
        from encoder to encoder and with the draw of a shadow's splits, and one shadow encoder
        cannot show which part of it carries over (the study trains a complement pair: the
        second shadow's members are the first's non-members).
    target_reference: the target encoder's embeddings of the reference split (known
        non-members).
    target_training: audit only; the target's embeddings of known training samples,
        disjoint from the evaluated ones.
    calibration_members / calibration_nonmembers: audit only; the target's embeddings of
        members / non-members disjoint from the evaluated ones.
    allow_different_dims: by default every array must share one embedding dimension D (a
        mismatch between shadow and target is usually a mistake). Set True for a shadow
        encoder with another backbone: the attacks carry nothing D-dependent from the
        shadow to the target (norms, cosines and neighbour similarities are scalars).
    """

    level: str = "shadow"
    shadow_members: Optional[Tensor] = None
    shadow_nonmembers: Optional[Tensor] = None
    shadow_reference: Optional[Tensor] = None
    target_reference: Optional[Tensor] = None
    target_training: Optional[Tensor] = None
    calibration_members: Optional[Tensor] = None
    calibration_nonmembers: Optional[Tensor] = None
    more_shadows: Tuple[LabelledEncoder, ...] = ()
    allow_different_dims: bool = False

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"knowledge level must be one of {LEVELS}, got {self.level!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("level", "allow_different_dims", "more_shadows") and value is not None:
                setattr(self, f.name, as_views(value, f.name))
        self.more_shadows = tuple(self._checked_shadow(s, i) for i, s in enumerate(self.more_shadows))
        extra = [(f"more_shadows[{i}].{n}", getattr(s, n)) for i, s in enumerate(self.more_shadows)
                 for n in ("members", "nonmembers", "reference")]
        groups = ((_SHADOW_NAMES, extra), (_TARGET_NAMES, [])) if self.allow_different_dims else \
            ((_SHADOW_NAMES + _TARGET_NAMES, extra),)
        for group, more in groups:
            present = [(n, getattr(self, n)) for n in group if getattr(self, n) is not None] + \
                [(n, v) for n, v in more if v is not None]
            for name, value in present[1:]:
                check_same_dim(present[0][1], value, present[0][0], name)

    def _checked_shadow(self, shadow, i: int) -> LabelledEncoder:
        if not isinstance(shadow, LabelledEncoder):
            raise TypeError(f"more_shadows[{i}] must be a LabelledEncoder(members, nonmembers, reference), "
                            f"got {type(shadow).__name__}")
        if self.shadow_members is None or self.shadow_nonmembers is None:
            raise ValueError("more_shadows adds to the first shadow encoder: pass shadow_members and "
                             "shadow_nonmembers too")
        if (shadow.reference is None) != (self.shadow_reference is None):
            given = "shadow_reference" if shadow.reference is None else f"more_shadows[{i}].reference"
            raise ValueError(f"{given} is given and the other is not: give every shadow encoder its reference "
                             "embeddings, or none")
        checked = LabelledEncoder(*(None if v is None else as_views(v, f"more_shadows[{i}].{n}")
                                    for n, v in (("members", shadow.members), ("nonmembers", shadow.nonmembers),
                                                 ("reference", shadow.reference))))
        k = int(self.shadow_members.shape[1])
        for name in ("members", "nonmembers"):
            if int(getattr(checked, name).shape[1]) != k:
                raise ValueError(f"more_shadows[{i}].{name} has K={getattr(checked, name).shape[1]} views per "
                                 f"sample; the first shadow encoder's have K={k}")
        return checked

    def first_views(self, k: int) -> "AttackerKnowledge":
        """The same knowledge at query budget k: every array cut to its first k views."""
        if k < 1:
            raise ValueError(f"the query budget k must be >= 1, got {k}")
        arrays = {n: None if getattr(self, n) is None else getattr(self, n)[:, :k]
                  for n in _SHADOW_NAMES + _TARGET_NAMES}
        return AttackerKnowledge(level=self.level, allow_different_dims=self.allow_different_dims,
                                 more_shadows=tuple(s.first_views(k) for s in self.more_shadows), **arrays)

    def target_dim(self) -> Optional[int]:
        """D of the target encoder's embeddings (what the fitted attack will score)."""
        names = _TARGET_NAMES if self.allow_different_dims else _TARGET_NAMES + _SHADOW_NAMES
        for name in names:
            if getattr(self, name) is not None:
                return int(getattr(self, name).shape[-1])
        return None

    def require(self, *names: str, attack: str) -> Tuple[Tensor, ...]:
        """The named arrays; a clear error naming what is missing and for which attack."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"attack {attack!r} at knowledge level {self.level!r} needs {', '.join(missing)}, "
                f"which the AttackerKnowledge does not hold"
            )
        return tuple(getattr(self, n) for n in names)

    def labelled_sets(self, attack: str) -> Tuple[Tensor, Tensor]:
        """The (members, non-members) with known labels, every labelled encoder's pooled."""
        encoders = self.labelled_encoders(attack)
        if len(encoders) == 1:
            return encoders[0].members, encoders[0].nonmembers
        return torch.cat([e.members for e in encoders]), torch.cat([e.nonmembers for e in encoders])

    def labelled_encoders(self, attack: str, level: Optional[str] = None) -> List[LabelledEncoder]:
        """Each encoder with known members and non-members at `level` (default: this knowledge's):
        every shadow encoder, or at the audit level the target's calibration sets (reference: its
        target_reference)."""
        level = self.level if level is None else level
        if level == "shadow":
            members, nonmembers = self.require("shadow_members", "shadow_nonmembers", attack=attack)
            return [LabelledEncoder(members, nonmembers, self.shadow_reference)] + list(self.more_shadows)
        if level == "audit":
            members, nonmembers = self.require("calibration_members", "calibration_nonmembers", attack=attack)
            return [LabelledEncoder(members, nonmembers, self.target_reference)]
        raise ValueError(
            f"attack {attack!r} needs labelled members and non-members (knowledge level 'shadow' or "
            f"'audit'); level 'reference' holds only known non-members"
        )


def check_views(views, name: str, min_views: int = 1, dim: Optional[int] = None) -> Tensor:
    """Validated (N, K, D) views with K >= min_views and, once fitted, the fitted D."""
    t = as_views(views, name)
    if t.shape[1] < min_views:
        raise ValueError(f"{name} has K={t.shape[1]} views per sample; this attack needs K >= {min_views}")
    if dim is not None and t.shape[2] != dim:
        raise ValueError(f"{name} have D={t.shape[2]}, but the attack was fitted on D={dim}")
    return t


def fit_orientation(member_raw: np.ndarray, nonmember_raw: np.ndarray) -> Tuple[float, float]:
    """Learn (sign, threshold) of a raw statistic from labelled data.

    sign is +1 when members score higher (AUC >= 0.5), else -1; threshold is the oriented
    score with the best balanced accuracy ("member" when sign * raw >= threshold).
    """
    raw = np.concatenate([member_raw, nonmember_raw]).astype(np.float64)
    labels = np.concatenate([np.ones(member_raw.size, bool), np.zeros(nonmember_raw.size, bool)])
    sign = 1.0 if metrics.roc_auc(raw, labels) >= 0.5 else -1.0
    return sign, best_threshold(sign * raw, labels)


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold t ("member" when score >= t) with the best balanced accuracy."""
    order = np.unique(scores)[::-1]
    fpr, tpr = metrics.roc_curve(scores, labels)
    # ROC point i >= 1 is the threshold order[i - 1]; (0, 0) is "flag nothing".
    return float(order[int(np.argmax(tpr[1:] - fpr[1:]))])


def init_params(obj) -> dict:
    """The constructor arguments of obj, read back from the attributes of the same names
    (every attack stores each argument under its own name); floats JSON-safe (p = inf)."""
    signature = inspect.signature(type(obj).__init__)
    names = [n for n, a in signature.parameters.items() if n != "self" and a.kind not in (a.VAR_POSITIONAL, a.VAR_KEYWORD)]
    return {n: encode_float(v) if isinstance(v, float) else v for n, v in ((n, getattr(obj, n)) for n in names)}


class Attack:
    """Base class: shared checks, threshold prediction and the JSON envelope."""

    name = "attack"
    label = "attack"  # the name the report and plots print
    levels: Tuple[str, ...] = ("shadow", "audit")  # knowledge levels it can be fitted at
    takes_p = False  # whether its statistic is an Lp-norm (swept over p)
    min_views = 1
    # Whether fit reads only the labelled sets (and D): fitted on the same shadow encoders, it
    # is then the same attack for every target (the study fits it once per configuration).
    labelled_data_only = False

    def get_params(self) -> dict:
        return init_params(self)

    def _state(self) -> dict:
        raise NotImplementedError

    def _set_state(self, state: dict) -> None:
        raise NotImplementedError

    def fit(self, knowledge: AttackerKnowledge) -> "Attack":
        raise NotImplementedError

    def score(self, views) -> np.ndarray:
        raise NotImplementedError

    def predict(self, views) -> np.ndarray:
        """Boolean membership guesses at the threshold learned in fit."""
        self._check_fitted()
        return self.score(views) >= self.threshold_

    def _check_fitted(self) -> None:
        if not hasattr(self, "dim_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(knowledge) first")

    def _check(self, views, name: str = "views") -> Tensor:
        self._check_fitted()
        return check_views(views, name, self.min_views, self.dim_)

    def to_dict(self) -> dict:
        self._check_fitted()
        return {"attack": self.name, "params": self.get_params(), "state": self._state()}

    @classmethod
    def from_dict(cls, d: dict) -> "Attack":
        if not isinstance(d, dict) or d.get("attack") != cls.name:
            found = d.get("attack") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a saved {cls.name!r} attack (found {found!r})")
        attack = cls(**d["params"])
        attack._set_state(d["state"])
        return attack

