"""What the attacker knows: the view embeddings of one target (ViewSet), the audit level's
halves of the target's own members and non-members (AuditSplit), and the AttackerKnowledge
of a level built from them (make_knowledge)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np
from torch import Tensor

from ..attacks import AttackerKnowledge, LabelledEncoder
from ..validation import as_views, check_same_dim

_VIEW_FIELDS = ("members", "nonmembers", "target_reference", "shadow_members", "shadow_nonmembers",
                "shadow_reference")


@dataclass
class ViewSet:
    """(N, K, D) view embeddings of one target encoder's evaluated samples and of what the
    attacker can query, all with the same K (the largest budget; smaller ones are slices).

    members / nonmembers: the target's members and non-members being evaluated.
    target_reference: the target's embeddings of the reference split (known non-members).
    shadow_members / shadow_nonmembers / shadow_reference: the shadow encoder's embeddings of
        its member, non-member and reference splits.
    more_shadows: further shadow encoders' embeddings (`AttackerKnowledge.more_shadows`).
    """

    members: Tensor
    nonmembers: Tensor
    target_reference: Optional[Tensor] = None
    shadow_members: Optional[Tensor] = None
    shadow_nonmembers: Optional[Tensor] = None
    shadow_reference: Optional[Tensor] = None
    more_shadows: Tuple[LabelledEncoder, ...] = ()

    def __post_init__(self):
        present = []
        for name in _VIEW_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            value = as_views(value, name)
            setattr(self, name, value)
            present.append((name, value))
        for name, value in present[1:]:
            check_same_dim(present[0][1], value, present[0][0], name)
            if value.shape[1] != present[0][1].shape[1]:
                raise ValueError(f"every view set needs the same K: {present[0][0]} has K={present[0][1].shape[1]}, "
                                 f"{name} has K={value.shape[1]}")

    @property
    def max_k(self) -> int:
        return int(self.members.shape[1])

    @property
    def has_shadow(self) -> bool:
        return self.shadow_members is not None and self.shadow_nonmembers is not None

    @property
    def has_references(self) -> bool:
        return self.target_reference is not None and (self.shadow_reference is not None or not self.has_shadow)

    def sliced(self, k: int) -> "ViewSet":
        """The first k views of every sample (view 1 is the clean image when queried so)."""
        if not 1 <= k <= self.max_k:
            raise ValueError(f"k must be in [1, {self.max_k}], got {k}")
        return ViewSet(**{name: None if getattr(self, name) is None else getattr(self, name)[:, :k]
                          for name in _VIEW_FIELDS}, more_shadows=tuple(s.first_views(k) for s in self.more_shadows))


@dataclass
class AuditSplit:
    """How the audit level uses the target's own members and non-members without scoring a
    sample it was calibrated on: each set is halved (seeded); the second halves are evaluated.
    The first half of the members is halved again into the known-training bank (for the
    nearest-neighbour attack) and the labelled calibration members; the first half of the
    non-members is the labelled calibration non-members."""

    bank: np.ndarray
    calibration_members: np.ndarray
    calibration_nonmembers: np.ndarray
    eval_members: np.ndarray
    eval_nonmembers: np.ndarray

    @classmethod
    def draw(cls, n_members: int, n_nonmembers: int, seed: int) -> "AuditSplit":
        if n_members < 4 or n_nonmembers < 2:
            raise ValueError(f"the audit level needs at least 4 members and 2 non-members, got {n_members} "
                             f"and {n_nonmembers}")
        rng = np.random.default_rng(seed)
        m, n = rng.permutation(n_members), rng.permutation(n_nonmembers)
        half_m, half_n = n_members // 2, n_nonmembers // 2
        quarter = half_m // 2
        return cls(bank=np.sort(m[:quarter]), calibration_members=np.sort(m[quarter:half_m]),
                   calibration_nonmembers=np.sort(n[:half_n]), eval_members=np.sort(m[half_m:]),
                   eval_nonmembers=np.sort(n[half_n:]))

    def to_dict(self) -> dict:
        return {k: np.asarray(v).tolist() for k, v in asdict(self).items()}


def make_knowledge(views: ViewSet, level: str, audit: Optional[AuditSplit] = None) -> AttackerKnowledge:
    """The attacker's knowledge at `level`, from the views (audit needs the AuditSplit)."""
    if level == "reference":
        if views.target_reference is None:
            raise ValueError("knowledge level 'reference' needs the target's reference embeddings")
        return AttackerKnowledge(level="reference", target_reference=views.target_reference)
    if level == "shadow":
        if not views.has_shadow:
            raise ValueError("knowledge level 'shadow' needs the shadow encoder's member and non-member embeddings")
        return AttackerKnowledge(level="shadow", shadow_members=views.shadow_members,
                                 shadow_nonmembers=views.shadow_nonmembers,
                                 shadow_reference=views.shadow_reference, target_reference=views.target_reference,
                                 more_shadows=views.more_shadows)
    if audit is None:
        raise ValueError("knowledge level 'audit' needs an AuditSplit")
    return AttackerKnowledge(level="audit", target_training=views.members[audit.bank],
                             calibration_members=views.members[audit.calibration_members],
                             calibration_nonmembers=views.nonmembers[audit.calibration_nonmembers],
                             target_reference=views.target_reference)
