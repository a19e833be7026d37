"""Reference encoders: the knowledge behind per-sample calibration (LiRA, RMIA).

The attacker trains R reference encoders, each on a random half of a pool of N candidate
samples (the target's members and non-members are among the candidates, as in LiRA), and
queries every encoder on every candidate with the same K views. `in_mask[r, i]` is True
when candidate i was in reference encoder r's training set.

Population: RMIA compares each candidate with population samples z, known non-members of
the target and of every reference encoder (disjoint from the candidates). They are
queried like the candidates: `population_views[r]` under reference encoder r and
`target_population_views` under the target. The population also gives each encoder the
scale of its statistic (standardization) and the "knn" statistic its neighbour bank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from torch import Tensor

from ..validation import as_views

LEVEL = "reference-encoders"  # not "reference" (known non-members only): R trained encoders


def draw_reference_masks(n_candidates: int, R: int, seed: int) -> np.ndarray:
    """(R, N) bool in-masks of R reference encoders over N candidates, seeded.

    Rows come in complementary pairs: row 2j is a random half of the candidates and row
    2j+1 the other half. Every row holds half the candidates (floor or ceil for odd N),
    and with R even every candidate is in exactly R/2 references (LiRA's balance); an odd
    R ends with one more independent random half.
    """
    if int(n_candidates) != n_candidates or n_candidates < 2:
        raise ValueError(f"n_candidates must be an integer >= 2, got {n_candidates}")
    if int(R) != R or R < 2:
        raise ValueError(f"R (reference encoders) must be an integer >= 2, got {R}")
    n, R = int(n_candidates), int(R)
    rng = np.random.default_rng(seed)
    masks = np.zeros((R, n), dtype=bool)
    for r in range(0, R, 2):
        half = rng.permutation(n)[: n // 2]
        masks[r, half] = True
        if r + 1 < R:
            masks[r + 1] = ~masks[r]
    return masks


def _views_list(value, name: str) -> List[Tensor]:
    if value is None:
        return None
    if isinstance(value, (Tensor, np.ndarray)):
        if value.ndim != 4:
            raise ValueError(f"{name} must be a list of (N, K, D) arrays, one per reference encoder "
                             f"(or one (R, N, K, D) array), got shape {tuple(value.shape)}")
        value = list(value)
    return [as_views(v, f"{name}[{r}]") for r, v in enumerate(value)]


def _check_shapes(views: Sequence[Tensor], name: str) -> None:
    shapes = {tuple(v.shape) for v in views}
    if len(shapes) != 1:
        raise ValueError(f"every {name}[r] must have the same (N, K, D); got {[tuple(v.shape) for v in views]}")


def _as_mask(in_mask) -> np.ndarray:
    mask = np.asarray(in_mask.cpu() if isinstance(in_mask, Tensor) else in_mask)
    if mask.dtype != bool:
        if mask.dtype.kind not in "iu" or not np.isin(mask, (0, 1)).all():
            raise ValueError(f"in_mask must be boolean (or 0/1), got dtype {mask.dtype}")
        mask = mask.astype(bool)
    return mask


@dataclass
class ReferenceKnowledge:
    """What the attacker holds for per-sample calibration (see the module docstring).

    reference_views: R >= 2 arrays (N, K, D), reference encoder r's views of the N
        candidates, in the same order as the target views that will be scored.
    in_mask: (R, N) bool, True where candidate i was in reference encoder r's training set.
    population_views: optional, R arrays (M, K, D): the population under each reference
        encoder (same order as reference_views). Needed by RMIA, by the "knn" statistic
        (its neighbour bank) and by standardize=True.
    target_population_views: optional (M, K, D): the same population under the target
        encoder. Given exactly when population_views is.
    """

    reference_views: list
    in_mask: np.ndarray
    population_views: Optional[list] = None
    target_population_views: Optional[Tensor] = None

    def __post_init__(self):
        if self.reference_views is None:
            raise ValueError("reference_views must be a list of (N, K, D) arrays, one per reference encoder")
        self.reference_views = _views_list(self.reference_views, "reference_views")
        R = len(self.reference_views)
        if R < 2:
            raise ValueError(f"per-sample calibration needs R >= 2 reference encoders, got R={R}")
        _check_shapes(self.reference_views, "reference_views")
        n, k, d = self.reference_views[0].shape
        self.in_mask = _as_mask(self.in_mask)
        if self.in_mask.shape != (R, n):
            raise ValueError(f"in_mask must be (R, N) = ({R}, {n}) (reference encoders x candidates), "
                             f"got shape {self.in_mask.shape}")
        if (self.population_views is None) != (self.target_population_views is None):
            raise ValueError("population_views and target_population_views go together: give both or neither")
        if self.population_views is not None:
            self.population_views = _views_list(self.population_views, "population_views")
            if len(self.population_views) != R:
                raise ValueError(f"population_views must hold one array per reference encoder (R={R}), "
                                 f"got {len(self.population_views)}")
            self.target_population_views = as_views(self.target_population_views, "target_population_views")
            _check_shapes(self.population_views + [self.target_population_views], "population_views")
            m, kp, dp = self.target_population_views.shape
            if m < 2:
                raise ValueError(f"the population needs at least 2 samples (each encoder's scale), got M={m}")
            if (kp, dp) != (k, d):
                raise ValueError(f"the population views have (K, D) = ({kp}, {dp}); the candidates' are ({k}, {d})")

    @property
    def level(self) -> str:
        """The knowledge level, as AttackerKnowledge.level names its own."""
        return LEVEL

    @property
    def n_references(self) -> int:
        return len(self.reference_views)

    @property
    def n_candidates(self) -> int:
        return int(self.reference_views[0].shape[0])

    @property
    def n_views(self) -> int:
        return int(self.reference_views[0].shape[1])

    @property
    def dim(self) -> int:
        return int(self.reference_views[0].shape[2])

    @property
    def has_population(self) -> bool:
        return self.population_views is not None

    def first_views(self, k: int) -> "ReferenceKnowledge":
        """The same knowledge at query budget k: every array cut to its first k views."""
        if k < 1:
            raise ValueError(f"the query budget k must be >= 1, got {k}")
        cut = (lambda views: None if views is None else [v[:, :k] for v in views])
        return ReferenceKnowledge(
            cut(self.reference_views), self.in_mask.copy(), cut(self.population_views),
            None if self.target_population_views is None else self.target_population_views[:, :k])

    def check_sides(self, online: bool, attack: str) -> None:
        """Every candidate out of some reference encoder, and in some when online."""
        sides = [("out of", ~self.in_mask)] + ([("in", self.in_mask)] if online else [])
        for word, side in sides:
            never = np.flatnonzero(~side.any(axis=0))
            if never.size:
                mode = "online" if online else "offline"
                raise ValueError(
                    f"{attack} ({mode}) needs every candidate {word} at least one reference encoder's training "
                    f"set; {never.size} candidates never are (first: {never[:5].tolist()}); draw the masks "
                    f"with draw_reference_masks")
        if not self.in_mask.any() or self.in_mask.all():
            raise ValueError(f"{attack} learns from the reference encoders' members and non-members; in_mask "
                             f"must hold both True and False")
