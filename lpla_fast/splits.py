"""Disjoint, seeded index splits of one dataset: target and shadow members / non-members, the
attacker's reference non-members, and a labelled probe split for feature quality."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np

from .fileio import write_json

# The two encoders of a study: each trains on its own member split, "<role>_members".
ROLES = ("target", "shadow")
SPLIT_NAMES = ("target_members", "target_nonmembers", "shadow_members", "shadow_nonmembers",
               "reference", "probe_train", "probe_test")
_FORMAT = "lpla_fast.splits/1"


@dataclass(frozen=True)
class SplitSizes:
    """Number of samples in each split. The defaults use all 1797 digits; leakage needs few
    members trained for many epochs (about 200 members)."""

    target_members: int = 200
    target_nonmembers: int = 200
    shadow_members: int = 200
    shadow_nonmembers: int = 200
    reference: int = 200
    probe_train: int = 400
    probe_test: int = 397

    def __post_init__(self):
        for name, value in asdict(self).items():
            if int(value) != value or value < 0:
                raise ValueError(f"SplitSizes.{name} must be a non-negative integer, got {value!r}")

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    def fitted_to(self, num_samples: int, keep=()) -> "SplitSizes":
        """These sizes, scaled down in proportion when they need more than num_samples; the
        splits named in `keep` keep their size (ValueError when they alone need more)."""
        if self.total <= num_samples:
            return self
        sizes = asdict(self)
        kept = sum(sizes[name] for name in keep)
        if kept > num_samples:
            raise ValueError(f"the splits {', '.join(keep)} need {kept} samples but the dataset has {num_samples}")
        ratio = (num_samples - kept) / (self.total - kept)
        return SplitSizes(**{k: v if k in keep else int(v * ratio) for k, v in sizes.items()})


@dataclass
class Splits:
    """Seven disjoint int64 index arrays into one dataset, and the seed that drew them."""

    target_members: np.ndarray
    target_nonmembers: np.ndarray
    shadow_members: np.ndarray
    shadow_nonmembers: np.ndarray
    reference: np.ndarray
    probe_train: np.ndarray
    probe_test: np.ndarray
    seed: int = 0
    num_samples: int = 0

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; choose one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def check_disjoint(self) -> "Splits":
        """Raise ValueError when an index appears twice or lies outside the dataset."""
        seen = np.concatenate([self[name] for name in SPLIT_NAMES])
        if seen.size != np.unique(seen).size:
            raise ValueError("splits overlap: some sample index appears in more than one split")
        if seen.size and (seen.min() < 0 or (self.num_samples and seen.max() >= self.num_samples)):
            raise ValueError(f"split indices fall outside [0, {self.num_samples})")
        return self

    def to_json(self, path: str) -> None:
        doc = {"format": _FORMAT, "seed": self.seed, "num_samples": self.num_samples}
        doc.update({name: self[name].tolist() for name in SPLIT_NAMES})
        write_json(path, doc, indent=None)

    @classmethod
    def from_json(cls, path: str) -> "Splits":
        with open(path) as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"splits file {path!r} is not valid JSON: {exc}") from exc
        if doc.get("format") != _FORMAT:
            raise ValueError(f"{path!r} is not a splits file (format {doc.get('format')!r}, expected {_FORMAT!r})")
        arrays = {name: np.asarray(doc[name], dtype=np.int64) for name in SPLIT_NAMES}
        return cls(**arrays, seed=int(doc["seed"]), num_samples=int(doc["num_samples"])).check_disjoint()


def make_splits(num_samples: int, sizes: SplitSizes | None = None, seed: int = 0) -> Splits:
    """Draw disjoint splits from range(num_samples) with a seeded permutation.

    Raises ValueError when the sizes need more samples than there are; use
    `sizes.fitted_to(num_samples)` to scale them down instead.
    """
    sizes = sizes or SplitSizes()
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if sizes.total > num_samples:
        raise ValueError(
            f"the splits need {sizes.total} samples but the dataset has {num_samples}; "
            f"pass smaller SplitSizes or sizes.fitted_to({num_samples})"
        )
    order = np.random.default_rng(seed).permutation(num_samples).astype(np.int64)
    arrays, start = {}, 0
    for f in fields(SplitSizes):
        n = getattr(sizes, f.name)
        arrays[f.name] = np.sort(order[start:start + n])
        start += n
    return Splits(**arrays, seed=int(seed), num_samples=int(num_samples))
