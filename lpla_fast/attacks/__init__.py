"""Membership-inference attacks on encoder embeddings.

Every attack: `fit(knowledge: AttackerKnowledge) -> self`, `score(views) -> (N,) float64`
(larger = more likely a member; the direction is learned in fit), `predict(views)` at the
learned threshold, `to_dict()` / `from_dict(d)` JSON-able state. Class attributes: `name`, `label`
(what reports print), `levels` (knowledge levels it supports), `takes_p` (swept over p), `min_views`.
"""

from __future__ import annotations

from .base import AttackerKnowledge, Attack
from .encodermi import EncoderMISet, EncoderMIThreshold, EncoderMIVector
from .knn import KNNAttack
from .lpla import LpLA, LpLAPerExample
from .norm import NormThreshold

_CLASSES = {cls.name: cls for cls in (LpLA, NormThreshold, EncoderMIThreshold, EncoderMIVector, EncoderMISet,
                                      KNNAttack)}
ATTACKS = tuple(_CLASSES)


def attack_class(name: str) -> type:
    """The class of an attack by name (one of ATTACKS): its `label`, `levels`, `takes_p`, `min_views`."""
    if name not in _CLASSES:
        raise ValueError(f"unknown attack {name!r}; choose one of {ATTACKS}")
    return _CLASSES[name]


def make_attack(name: str, **params) -> Attack:
    """An attack by name (one of ATTACKS) with its parameters."""
    return attack_class(name)(**params)


def attack_from_dict(d: dict) -> Attack:
    """Reload a fitted attack saved with `to_dict()`."""
    name = d.get("attack") if isinstance(d, dict) else None
    if name not in _CLASSES:
        raise ValueError(f"not a saved attack (attack={name!r}); known: {ATTACKS}")
    return _CLASSES[name].from_dict(d)


__all__ = ["Attack", "AttackerKnowledge", "ATTACKS", "attack_class", "make_attack", "attack_from_dict", "LpLA", "LpLAPerExample",
           "NormThreshold", "EncoderMIThreshold", "EncoderMIVector", "EncoderMISet", "KNNAttack"]
