"""What the report and the plots both read from a run's Results: attack labels, the across-seed
summaries computed once, the headline K and architecture, the strongest attacks.

Its own module so that `report` (which draws the plots) and `plots` both import it and not each other.
"""

from __future__ import annotations

from typing import List, Optional

from ..attacks import ATTACKS, REFERENCE_ATTACKS, attack_class
from .results import AttackRecord, Results
from .stats import SeedStats, SeedSummary, dedupe, group_by_seed, headline_architecture, headline_k, is_reference, strongest, variant


def attack_label(name: str) -> str:
    """The name reports and plots print for an attack (its class's `label`)."""
    base = name.split("-")[0]
    if name in ATTACKS or name in REFERENCE_ATTACKS:
        return attack_class(name).label
    if base in REFERENCE_ATTACKS:  # "lira-offline"
        return attack_class(base).label + name[len(base):]
    return name


def record_label(record: AttackRecord) -> str:
    """An attack as configured: "LpLA", "LpLA (mean_spread)", "LiRA-online (lpla)", ..."""
    name = variant(record)
    attack, _, detail = name.partition("/")
    return attack_label(attack) + (f" ({detail})" if detail else "")


# --- formatting helpers ---------------------------------------------------------------------------


def distinct(records: List[AttackRecord], key: str) -> List:
    """The values of one record attribute, in order of first appearance."""
    seen = []
    for r in records:
        if getattr(r, key) not in seen:
            seen.append(getattr(r, key))
    return seen


class ReportData:
    """What every section reads: the results, the across-seed summaries (computed once), the
    headline K and architecture, and the strongest attacks."""

    def __init__(self, results: Results, stats: Optional[SeedStats] = None):
        self.results = results
        self.stats = stats or SeedStats(n_bootstrap=n_bootstrap(results), seed=study_value(results, "seed", 0))
        self.k = headline_k(results)
        self.architecture = headline_architecture(results)
        headline = self.headline(self.k)
        self.outputs = distinct(headline, "output")
        groups = group_by_seed(headline)
        self.strongest = {o: strongest(groups, self.stats, lambda g, o=o: g[0].output == o) for o in self.outputs}
        self.strongest_global = {o: strongest(groups, self.stats, lambda g, o=o: g[0].output == o
                                              and not is_reference(g[0])) for o in self.outputs}
        self.strongest_reference = {o: strongest(groups, self.stats, lambda g, o=o: g[0].output == o
                                                 and is_reference(g[0])) for o in self.outputs}
        self.labels = {variant(r): record_label(r) for r in results.records}

    def headline(self, k: Optional[int]) -> List[AttackRecord]:
        """Undefended records at the main architecture and query budget k: the global attacks
        (main table, or the K sweep) and the reference-calibrated ones, one per point."""
        return dedupe(r for r in self.results.records if r.study in ("main", "references", "k") and r.k == k
                      and r.defense is None and self.at_main(r))

    def undefended(self) -> List[AttackRecord]:
        """The defense table's baseline: the undefended targets attacked exactly as the defended
        ones (the "defense" study's records without a defense), else the headline records."""
        same = [r for r in self.results.records if r.study == "defense" and r.defense is None and r.k == self.k]
        return same or self.headline(self.k)

    def defended(self) -> List[AttackRecord]:
        """The records of defended releases or encoders, at the headline K when the run has it there."""
        records = [r for r in self.results.records if r.defense and r.study == "defense"]
        at_k = [r for r in records if r.k == self.k]
        return at_k or records

    def at_main(self, record: AttackRecord) -> bool:
        """Whether a record attacked the main architecture (a record without one is taken to)."""
        return record.architecture is None or record.architecture == self.architecture

    def summary(self, records: List[AttackRecord]) -> Optional[SeedSummary]:
        return self.stats.of(records)


def study_value(results: Results, name: str, default):
    return (results.config.get("study") or {}).get(name, default)


def n_bootstrap(results: Results) -> int:
    return int(study_value(results, "n_bootstrap", 1000))
