"""The attack stage's job list: every (table, attack, level, K, p) to run, why one cannot run
at a point, and the parameters each attack gets. What an attack supports is read from its
class (`levels`, `takes_p`, `min_views`), so adding an attack touches `attacks/` only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..attacks import REFERENCE_LEVEL, attack_class
from .knowledge import ViewSet
from .settings import REFERENCE_ATTACK_SPECS, StudyConfig

# The tables of a study. "main" (global attacks, shadow level), "references" (reference-
# calibrated attacks), the "p", "k" and "knowledge" sweeps, the "ladder" (architecture axis) and
# "defense" (privacy-utility) tables. Jobs of the last three are evaluated on the audit level's
# held-out halves, so that every level and every configuration is compared on the same samples.
STUDIES = ("main", "references", "p", "k", "knowledge", "characteristic", "ladder", "defense")
HELD_OUT_STUDIES = ("knowledge", "ladder", "defense")


@dataclass(frozen=True)
class Job:
    """One attack fit: `study` is the table it belongs to (one of STUDIES). A reference-
    calibrated attack (level "reference-encoders") also names its per-sample `statistic` and
    whether it is `online`; an LpLA job of the "characteristic" ablation its `characteristic`."""

    study: str
    attack: str
    level: str
    k: int
    p: Optional[float] = None
    statistic: Optional[str] = None
    online: Optional[bool] = None
    characteristic: Optional[str] = None

    @property
    def held_out(self) -> bool:
        # At the audit level the attack calibrates on the target's own members and non-members:
        # it is evaluated on the held-out halves only, never on a sample it was fitted on.
        return self.study in HELD_OUT_STUDIES or self.level == "audit"


def plan_jobs(study: StudyConfig, max_k: int) -> List[Job]:
    """Every job to run on one target's views: the main table, then the p, K and knowledge sweeps."""
    k = min(study.k, max_k)
    jobs = [Job("main", a, study.level, k) for a in study.attacks]
    jobs += [Job("p", a, study.level, k, p) for a in study.sweep_attacks if attack_class(a).takes_p for p in study.ps]
    jobs += [Job("k", a, study.level, kk) for a in study.sweep_attacks for kk in study.ks if kk <= max_k]
    jobs += [Job("knowledge", a, lvl, k) for a in study.sweep_attacks for lvl in study.levels]
    # Which "distribution characteristic" of the view norms carries membership (LpLA's ablation).
    jobs += [Job("characteristic", "lpla", study.level, kk, characteristic=c)
             for c in study.characteristics for kk in sorted({1, k})]
    return jobs


def reference_jobs(study: StudyConfig, table: str, max_k: int) -> List[Job]:
    """The reference-calibrated attacks of one table: every attack x statistic x budget."""
    jobs = []
    for name in study.reference_attacks:
        attack, online = REFERENCE_ATTACK_SPECS[name]
        for statistic in study.reference_statistics:
            jobs += [Job(table, attack, REFERENCE_LEVEL, k, statistic=statistic, online=online)
                     for k in sorted(set(study.reference_ks)) if k <= max_k]
    return jobs


def held_out_jobs(study: StudyConfig, table: str, max_k: int) -> List[Job]:
    """A "ladder" or "defense" table: the sweep attacks at the audit level (no shadow encoder
    needed), at the default budget and at K = 1."""
    ks = sorted({min(study.k, max_k), 1})
    return [Job(table, a, "audit", k) for a in study.sweep_attacks for k in ks]

def skip_reason(name: str, level: str, k: int, views: ViewSet, statistic: Optional[str] = None,
                references: int = 0, characteristic: Optional[str] = None) -> Optional[str]:
    """Why attack `name` cannot run at (level, k) on these views, or None."""
    cls = attack_class(name)
    if characteristic is not None:
        need = cls(characteristic=characteristic).min_views
        if k < need:
            return f"characteristic {characteristic!r} needs K >= {need}"
    if level == REFERENCE_LEVEL:
        from ..attacks.statistics import STATISTICS

        need = STATISTICS[statistic].min_views
        if k < need:
            return f"statistic {statistic!r} needs K >= {need}"
        if references < 2:
            return f"needs >= 2 reference encoders, the target has {references}"
        return None
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


def attack_params(study: StudyConfig, name: str, views: ViewSet, p: Optional[float] = None,
                  characteristic: Optional[str] = None) -> dict:
    """The constructor parameters of attack `name` at one job (p for the p sweep)."""
    params = dict(study.attack_params.get(name, {}))
    if characteristic is not None:
        params["characteristic"] = characteristic
    if attack_class(name).takes_p:
        if p is not None:
            params["p"] = p
        if not views.has_references:
            # Standardization needs each encoder's reference non-members.
            params["standardize"] = False
    return params
