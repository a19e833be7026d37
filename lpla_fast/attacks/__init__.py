"""Membership-inference attacks on encoder embeddings.

Every attack: `fit(knowledge) -> self`, `score(views) -> (N,) float64` (larger = more likely a
member; the direction is learned in fit), `predict(views)` at the learned threshold, `to_dict()` /
`from_dict(d)` JSON-able state. Class attributes: `name`, `label` (what reports print), `levels`
(knowledge levels it supports), `takes_p` (swept over p), `min_views`.
The attacks of ATTACKS fit on an AttackerKnowledge; those of REFERENCE_ATTACKS (LiRA, RMIA) on a
ReferenceKnowledge (reference encoders, knowledge level "reference-encoders") and score the
target's views of the same candidates.
"""

from __future__ import annotations

from .base import AttackerKnowledge, Attack, LabelledEncoder
from .encodermi import EncoderMISet, EncoderMIThreshold, EncoderMIVector
from .knn import KNNAttack
from .lira import LiRA
from .lpla import CHARACTERISTICS, CHOOSERS, LpLA
from .norm import NormThreshold
from .references import LEVEL as REFERENCE_LEVEL
from .references import ReferenceKnowledge, draw_reference_masks
from .rmia import RMIA
from .statistics import STATISTICS, view_norm_stats

_GLOBAL = (LpLA, NormThreshold, EncoderMIThreshold, EncoderMIVector, EncoderMISet, KNNAttack)
_REFERENCE = (LiRA, RMIA)
_CLASSES = {cls.name: cls for cls in _GLOBAL + _REFERENCE}
ATTACKS = tuple(cls.name for cls in _GLOBAL)
REFERENCE_ATTACKS = tuple(cls.name for cls in _REFERENCE)


def attack_class(name: str) -> type:
    """The class of an attack by name: its `label`, `levels`, `takes_p`, `min_views`."""
    if name not in _CLASSES:
        raise ValueError(f"unknown attack {name!r}; choose one of {ATTACKS + REFERENCE_ATTACKS}")
    return _CLASSES[name]


def make_attack(name: str, **params) -> Attack:
    """An attack by name (one of ATTACKS or REFERENCE_ATTACKS) with its parameters."""
    return attack_class(name)(**params)


def attack_from_dict(d: dict) -> Attack:
    """Reload a fitted attack saved with `to_dict()`."""
    name = d.get("attack") if isinstance(d, dict) else None
    if name not in _CLASSES:
        raise ValueError(f"not a saved attack (attack={name!r}); known: {ATTACKS + REFERENCE_ATTACKS}")
    return _CLASSES[name].from_dict(d)


__all__ = ["Attack", "AttackerKnowledge", "LabelledEncoder", "ATTACKS", "REFERENCE_ATTACKS", "REFERENCE_LEVEL",
           "attack_class", "make_attack", "attack_from_dict", "LpLA", "CHARACTERISTICS", "CHOOSERS", "NormThreshold",
           "EncoderMIThreshold", "EncoderMIVector", "EncoderMISet", "KNNAttack", "LiRA", "RMIA", "ReferenceKnowledge",
           "draw_reference_masks", "STATISTICS", "view_norm_stats"]
