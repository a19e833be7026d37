"""The attack stage's job list: every (table, attack, level, K, p) to run, why one cannot run
at a point, and the parameters each attack gets. What an attack supports is read from its
class (`levels`, `takes_p`, `min_views`), so adding an attack touches `attacks/` only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..attacks import attack_class
from .knowledge import ViewSet
from .settings import StudyConfig

STUDIES = ("main", "p", "k", "knowledge")


@dataclass(frozen=True)
class Job:
    """One attack fit: `study` is the table it belongs to (one of STUDIES)."""

    study: str
    attack: str
    level: str
    k: int
    p: Optional[float] = None


def plan_jobs(study: StudyConfig, max_k: int) -> List[Job]:
    """Every job to run on one target's views: the main table, then the p, K and knowledge sweeps."""
    k = min(study.k, max_k)
    jobs = [Job("main", a, study.level, k) for a in study.attacks]
    jobs += [Job("p", a, study.level, k, p) for a in study.sweep_attacks if attack_class(a).takes_p for p in study.ps]
    jobs += [Job("k", a, study.level, kk) for a in study.sweep_attacks for kk in study.ks if kk <= max_k]
    jobs += [Job("knowledge", a, lvl, k) for a in study.sweep_attacks for lvl in study.levels]
    return jobs


def skip_reason(name: str, level: str, k: int, views: ViewSet) -> Optional[str]:
    """Why attack `name` cannot run at (level, k) on these views, or None."""
    cls = attack_class(name)
    if k < cls.min_views:
        return f"needs K >= {cls.min_views}"
    if level not in cls.levels:
        return "needs labelled members and non-members" if level == "reference" else f"does not support level {level!r}"
    if level == "reference" and views.target_reference is None:
        return "no reference embeddings given"
    if level == "shadow" and not views.has_shadow:
        return "no shadow embeddings given"
    if name == "knn" and level == "shadow" and not views.has_references:
        return "needs reference embeddings as its neighbour bank"
    return None


def attack_params(study: StudyConfig, name: str, views: ViewSet, p: Optional[float] = None) -> dict:
    """The constructor parameters of attack `name` at one job (p for the p sweep)."""
    params = dict(study.attack_params.get(name, {}))
    if attack_class(name).takes_p:
        if p is not None:
            params["p"] = p
        if not views.has_references:
            # Standardization needs each encoder's reference non-members.
            params["standardize"] = False
    return params
