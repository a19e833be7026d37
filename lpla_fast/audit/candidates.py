"""The audit's images: the members, non-members and population, each decoded once into an
image cache (`streaming.cache`) at the encoder's input size, and the candidate pool built
from them.

Sample numbering: every evaluated candidate has a sample index, members first (in their cache's
order), then the non-members in the pool. scores.parquet and the npz files name candidates by it,
beside their id (the cache's id: the path inside an image folder, or shard:row) and path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ..streaming.cache import ImageCache, build_image_cache

ROLES = ("members", "nonmembers", "population")


def source_root(source: str) -> str:
    """The folder a source's ids are relative to (the tree itself, or the shards' folder)."""
    return os.path.abspath(source if os.path.isdir(source) else os.path.dirname(source) or ".")


def qualified_ids(cache: ImageCache, source: str) -> List[str]:
    """Each row's id made absolute (the source's folder joined to it): equal only for the same image file."""
    root = source_root(source)
    return [os.path.normpath(os.path.join(root, i)) for i in cache.ids]


def build_caches(sources: Dict[str, str], folder: str, image_size: int, skip_bad: bool,
                 progress: bool) -> Dict[str, ImageCache]:
    """{role: ImageCache} of every given source, in folder/<role>/ (reused when complete)."""
    return {role: build_image_cache(src, os.path.join(folder, role), image_size, channels=3, skip_bad=skip_bad,
                                    progress=progress)
            for role, src in sources.items()}


def check_disjoint(caches: Dict[str, ImageCache], sources: Dict[str, str]) -> None:
    """Members, non-members and population share no image: no id (the same file) and no
    content hash (identical pixels) in two of them. One line naming the first shared image."""
    roles = list(caches)
    for a_i, a in enumerate(roles):
        paths_a = dict(zip(qualified_ids(caches[a], sources[a]), caches[a].ids))
        hashes_a = dict(zip(caches[a].hashes, caches[a].ids))
        for b in roles[a_i + 1:]:
            for path in qualified_ids(caches[b], sources[b]):
                if path in paths_a:
                    raise ValueError(f"--{a} and --{b} overlap: {path} is in both")
            for h, own in zip(caches[b].hashes, caches[b].ids):
                if h in hashes_a:
                    raise ValueError(f"--{a} and --{b} overlap: {hashes_a[h]!r} ({a}) and {own!r} ({b}) are "
                                     "identical images")


@dataclass
class CandidatePool:
    """The candidates (members, then the non-members kept in the pool) and the population.

    member_rows, pool_rows: rows of the members' and non-members' caches, in sample order.
    population: (role, rows) of the population: the --population cache, or the non-members'
        rows set aside (None: no population).
    """

    caches: Dict[str, ImageCache]
    sources: Dict[str, str]
    member_rows: np.ndarray
    pool_rows: np.ndarray
    population: Optional[tuple]

    @property
    def n_members(self) -> int:
        return len(self.member_rows)

    @property
    def n_candidates(self) -> int:
        return len(self.member_rows) + len(self.pool_rows)

    @property
    def is_member(self) -> np.ndarray:
        return np.arange(self.n_candidates) < self.n_members

    def locate(self, sample: int):
        """(role, row) of candidate `sample`."""
        if sample < self.n_members:
            return "members", int(self.member_rows[sample])
        return "nonmembers", int(self.pool_rows[sample - self.n_members])

    def ids(self) -> List[str]:
        m, n = self.caches["members"].ids, self.caches["nonmembers"].ids
        return [m[r] for r in self.member_rows] + [n[r] for r in self.pool_rows]

    def paths(self) -> List[str]:
        m = qualified_ids(self.caches["members"], self.sources["members"])
        n = qualified_ids(self.caches["nonmembers"], self.sources["nonmembers"])
        return [m[r] for r in self.member_rows] + [n[r] for r in self.pool_rows]

    def images(self, samples) -> np.ndarray:
        """uint8 (n, C, S, S) of the candidates `samples` (read from the memory maps)."""
        samples = np.asarray(samples, np.int64)
        out = np.empty((len(samples),) + self.caches["members"].images.shape[1:], np.uint8)
        is_m = samples < self.n_members
        out[is_m] = self.caches["members"].images[self.member_rows[samples[is_m]]]
        out[~is_m] = self.caches["nonmembers"].images[self.pool_rows[samples[~is_m] - self.n_members]]
        return out


def make_pool(caches: Dict[str, ImageCache], sources: Dict[str, str], carve_population: float,
              seed: int) -> CandidatePool:
    """The candidate pool; with no --population and carve_population > 0, that fraction of the
    non-members (seeded) becomes the population, out of the pool and of every encoder."""
    members = np.arange(len(caches["members"]))
    nonmembers = np.arange(len(caches["nonmembers"]))
    if "population" in caches:
        return CandidatePool(caches, sources, members, nonmembers, ("population", np.arange(len(caches["population"]))))
    if carve_population <= 0:
        return CandidatePool(caches, sources, members, nonmembers, None)
    n_pop = int(round(carve_population * len(nonmembers)))
    order = np.random.default_rng([int(seed), 31]).permutation(len(nonmembers))
    population = np.sort(order[:n_pop])
    return CandidatePool(caches, sources, members, np.sort(order[n_pop:]), ("nonmembers", population))
