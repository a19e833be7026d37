"""Statistics over the study's records: which records are repeats of one configuration, their
mean over seeds with a hierarchical-bootstrap interval, the strongest attack, and the rank
correlation of feature quality with leakage over every (encoder, seed) point.

Everything here works from the records alone: a group is the set of records that differ only
in `seed`, whatever else the run varied (framework, architecture, defense, K, p, ...).
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from .. import metrics
from ..attacks import REFERENCE_ATTACKS
from ..attacks.references import LEVEL as REFERENCE_LEVEL
from .results import AttackRecord, EncoderRecord, Results

QUALITY_METRICS = ("linear_probe", "knn")
# The summarised metrics: AUC and TPR at each FPR target (metrics.FPR_TARGETS as keys).
SUMMARY_METRICS = ("auc", "0.001", "0.01", "0.1")
# Per-sample statistics of the reference-calibrated attacks that are p-norm statistics (LpLA's family).
NORM_STATISTICS = ("lpla", "mean_spread", "resultant", "multi_p")
NORM_ATTACKS = ("lpla", "norm")
# Which study a record of a repeated point is taken from first (the main table is the headline).
STUDY_PREFERENCE = ("main", "references", "k", "ladder", "p", "knowledge", "defense")
IGNORED_PARAMS = ("seed",)
# Resamples of one seed's members and non-members that the hierarchical bootstrap draws from
# (52 ms per 1000 on 400 samples: the report's cost is in these).
WITHIN_REPLICATES = 250  # parameters that change with the repeat, not with the configuration


# --- naming and grouping records -----------------------------------------------------------------

def is_reference(record: AttackRecord) -> bool:
    """Whether the attack is calibrated per sample with reference encoders (LiRA, RMIA)."""
    return record.attack.split("-")[0] in REFERENCE_ATTACKS or record.level == REFERENCE_LEVEL


def variant(record: AttackRecord) -> str:
    """The attack as configured, as a key: "lpla", "lpla/mean_spread", "lira-online/knn", ..."""
    params = record.params or {}
    if is_reference(record):
        name = record.attack
        if name in REFERENCE_ATTACKS and "online" in params:
            name += "-online" if params["online"] else "-offline"
        return f"{name}/{params.get('statistic', 'lpla')}"
    characteristic = params.get("characteristic")
    return record.attack if characteristic is None else f"{record.attack}/{characteristic}"


def family(record: AttackRecord) -> str:
    """"lpla" for the p-norm attacks (LpLA, the norm threshold, and LiRA / RMIA over a norm
    statistic), "baseline" for the others (EncoderMI, kNN, and LiRA / RMIA over them)."""
    if is_reference(record):
        return "lpla" if (record.params or {}).get("statistic", "lpla") in NORM_STATISTICS else "baseline"
    return "lpla" if record.attack in NORM_ATTACKS else "baseline"


def _params_key(params: dict) -> str:
    return repr(sorted((k, repr(v)) for k, v in (params or {}).items() if k not in IGNORED_PARAMS))


def group_key(record: AttackRecord) -> tuple:
    """Every attribute that names a configuration; records that share it differ only in seed."""
    return (record.framework, record.output, record.study, variant(record), record.level, record.k, record.p,
            record.backbone, record.width, record.defense, record.evaluated, _params_key(record.params))


def group_by_seed(records: Iterable[AttackRecord]) -> Dict[tuple, List[AttackRecord]]:
    """{group_key: the records of that configuration, one per seed}, in order of appearance."""
    groups: Dict[tuple, List[AttackRecord]] = {}
    for r in records:
        groups.setdefault(group_key(r), []).append(r)
    return groups


def headline_k(results: Results) -> Optional[int]:
    """The main table's query budget (the most common K among its records)."""
    ks = Counter(r.k for r in results.records if r.study == "main")
    return ks.most_common(1)[0][0] if ks else None


def headline_architecture(results: Results) -> Optional[str]:
    """The architecture of the main table's targets (the most common one)."""
    archs = Counter(r.architecture for r in results.records if r.study == "main")
    return archs.most_common(1)[0][0] if archs else None


def _rank(study: str) -> int:
    return STUDY_PREFERENCE.index(study) if study in STUDY_PREFERENCE else len(STUDY_PREFERENCE)


def dedupe(records: Iterable[AttackRecord]) -> List[AttackRecord]:
    """One record per configuration-and-seed across studies (the main table first): the same
    point measured by two studies (e.g. K=8 in main and in the K sweep) counts once."""
    best: Dict[tuple, AttackRecord] = {}
    for r in records:
        framework, output, _study, *rest = group_key(r)
        key = (framework, output, *rest, r.seed)
        if key not in best or _rank(r.study) < _rank(best[key].study):
            best[key] = r
    return list(best.values())


# --- mean over seeds with a hierarchical bootstrap ----------------------------------------------

@dataclass
class SeedSummary:
    """One configuration over its seeds. mean: {metric: mean of the seeds' values}; interval:
    {metric: (lo, hi)} 95% or None; method: how the interval was drawn:
    "seeds+samples" (seeds resampled, then each chosen seed's members and non-members),
    "seeds" (seeds resampled, their point values: the per-sample scores were not kept),
    "samples" (one seed: its members and non-members resampled),
    "per-seed interval" (one seed without scores: the record's own bootstrap interval),
    "none" (one seed, no interval)."""

    n_seeds: int
    seeds: List[int]
    method: str
    mean: Dict[str, float]
    interval: Dict[str, Optional[Tuple[float, float]]] = field(default_factory=dict)
    per_seed: Dict[str, List[float]] = field(default_factory=dict)

    @property
    def auc(self) -> float:
        return self.mean["auc"]

    def tpr_at(self, fpr: float) -> float:
        return self.mean[f"{fpr:g}"]


def _point(record: AttackRecord, metric: str) -> float:
    return record.auc if metric == "auc" else record.metrics["tpr_at_fpr"][metric]


def _stored_interval(record: AttackRecord, metric: str):
    ci = record.metrics.get("ci")
    if not ci:
        return None
    pair = ci["auc"] if metric == "auc" else ci["tpr_at_fpr"][metric]
    return float(pair[0]), float(pair[1])


def seed_summary(records: List[AttackRecord], n_bootstrap: int = 1000, seed: int = 0,
                 within_replicates: int = WITHIN_REPLICATES) -> Optional[SeedSummary]:
    """Mean and 95% interval over the scored records of one configuration (one per seed);
    None when every one was skipped. Deterministic for given records and `seed`.

    Each of the n_bootstrap replicates draws the seeds with replacement and, for each drawn
    seed, one of that seed's `within_replicates` stratified resamples of its members and
    non-members (computed once per seed: the cost is per seed, not per replicate)."""
    scored = [r for r in records if r.metrics]
    if not scored:
        return None
    points = np.array([[_point(r, m) for m in SUMMARY_METRICS] for r in scored])
    summary = SeedSummary(n_seeds=len(scored), seeds=[r.seed for r in scored], method="none",
                          mean=dict(zip(SUMMARY_METRICS, points.mean(axis=0).tolist())),
                          per_seed={m: points[:, i].tolist() for i, m in enumerate(SUMMARY_METRICS)})
    with_samples = all(r.samples is not None for r in scored)
    if n_bootstrap < 1 or (len(scored) == 1 and not with_samples):
        stored = [_stored_interval(scored[0], m) for m in SUMMARY_METRICS] if len(scored) == 1 else [None]
        if stored[0] is not None:
            summary.method = "per-seed interval"
            summary.interval = dict(zip(SUMMARY_METRICS, stored))
        return summary
    replicates = seed_replicates(scored, n_bootstrap, seed, within_replicates)
    summary.method = ("seeds+samples" if len(scored) > 1 else "samples") if with_samples else "seeds"
    lo, hi = np.percentile(replicates, [2.5, 97.5], axis=0)
    summary.interval = {m: (float(lo[i]), float(hi[i])) for i, m in enumerate(SUMMARY_METRICS)}
    return summary


def _rng(records: List[AttackRecord], seed: int) -> np.random.Generator:
    """The bootstrap's generator for one configuration: deterministic for its key and `seed`."""
    return np.random.default_rng([seed, zlib.crc32(repr(group_key(records[0])).encode())])


def _over_seeds(within: np.ndarray, chosen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hierarchical replicates (B, ...): for each replicate the chosen seeds (B, S) and, for each
    chosen seed, one of its within-seed resamples within[s, r] drawn at random; their mean."""
    draws = rng.integers(0, within.shape[1], size=chosen.shape)
    return within[chosen, draws].mean(axis=1)


def seed_replicates(scored: List[AttackRecord], n_bootstrap: int, seed: int = 0,
                    within_replicates: int = WITHIN_REPLICATES) -> np.ndarray:
    """(n_bootstrap, len(SUMMARY_METRICS)) hierarchical-bootstrap replicates of the mean over the
    scored records' seeds: seeds resampled, then each chosen seed's members and non-members
    (one of its `within_replicates` stratified resamples); the seeds' point values alone when a
    record lacks its per-sample scores."""
    rng = _rng(scored, seed)
    S = len(scored)
    chosen = rng.integers(0, S, size=(n_bootstrap, S))
    if not all(r.samples is not None for r in scored):
        points = np.array([[_point(r, m) for m in SUMMARY_METRICS] for r in scored])
        return points[chosen].mean(axis=1)
    within = []
    for r in scored:
        reps = metrics.bootstrap_metrics(r.samples.score, r.samples.is_member, min(n_bootstrap, within_replicates),
                                         seed=int(rng.integers(2 ** 31)))
        within.append(np.stack([reps[m] for m in SUMMARY_METRICS], axis=1))
    return _over_seeds(np.stack(within), chosen, rng)


# --- paired differences of two configurations over their seeds ----------------------------------

def _aligned(a: AttackRecord, b: AttackRecord):
    """(scores_a, scores_b, is_member) on the samples both scored, when a and b scored exactly the
    same samples (same ids, same truth); else None."""
    if a.samples is None or b.samples is None:
        return None
    ia, ib = np.argsort(a.samples.sample, kind="stable"), np.argsort(b.samples.sample, kind="stable")
    same = (np.array_equal(a.samples.sample[ia], b.samples.sample[ib])
            and np.array_equal(a.samples.is_member[ia], b.samples.is_member[ib]))
    return (a.samples.score[ia], b.samples.score[ib], a.samples.is_member[ia]) if same else None


def _metric_key(metric: str) -> str:
    return "auc" if metric == "auc" else f"{float(metric):g}"


def paired_seed_difference(records_a: List[AttackRecord], records_b: List[AttackRecord], metric: str = "auc",
                           n_bootstrap: int = 1000, seed: int = 0, within_replicates: int = WITHIN_REPLICATES,
                           ) -> Tuple[Optional[metrics.PairedDifference], List[metrics.PairedDifference]]:
    """The paired difference of two configurations scored on the same targets and samples: the
    mean over seeds of metric(a) - metric(b), and each seed's own paired difference (DeLong for
    the AUC, the paired bootstrap for a TPR).

    One seed: that seed's difference. Several: a paired hierarchical bootstrap (seeds resampled,
    then within each chosen seed the same resample of members and non-members for both).
    Returns (None, []) when no seed pairs up (the caller then compares them unpaired)."""
    by_seed = {r.seed: r for r in records_b if r.metrics}
    pairs = [(a, by_seed[a.seed]) for a in records_a if a.metrics and a.seed in by_seed]
    aligned = [_aligned(a, b) for a, b in pairs]
    if not pairs or any(x is None for x in aligned):
        return None, []
    key = _metric_key(metric)
    rng = _rng([pairs[0][0]], seed)
    per_seed, within = [], []
    for (sa, sb, y) in aligned:
        if key == "auc":
            per_seed.append(metrics.paired_delong(sa, sb, y))
        else:
            per_seed.append(metrics.paired_tpr_bootstrap(sa, sb, y, float(key), within_replicates,
                                                         seed=int(rng.integers(2 ** 31))))
    if len(pairs) == 1:
        return per_seed[0], per_seed
    for (sa, sb, y) in aligned:
        ra, rb = metrics.paired_bootstrap_metrics(sa, sb, y, min(n_bootstrap, within_replicates),
                                                  seed=int(rng.integers(2 ** 31)), fpr_targets=metrics.FPR_TARGETS)
        within.append(ra[key] - rb[key])
    chosen = rng.integers(0, len(pairs), size=(n_bootstrap, len(pairs)))
    replicates = _over_seeds(np.stack(within), chosen, rng)
    a_mean = float(np.mean([d.a for d in per_seed]))
    b_mean = float(np.mean([d.b for d in per_seed]))
    return metrics.bootstrap_difference(a_mean - b_mean, replicates, a_mean, b_mean,
                                        "paired hierarchical bootstrap"), per_seed


def unpaired_seed_difference(records_a: List[AttackRecord], records_b: List[AttackRecord], metric: str = "auc",
                             n_bootstrap: int = 1000, seed: int = 0) -> Optional[metrics.PairedDifference]:
    """The difference of two configurations' seed means when they were not scored on the same
    targets and samples (e.g. two encoders of the architecture ladder): each side's hierarchical
    bootstrap drawn independently, the replicates subtracted."""
    a = [r for r in records_a if r.metrics]
    b = [r for r in records_b if r.metrics]
    if not a or not b:
        return None
    column = SUMMARY_METRICS.index(_metric_key(metric))
    reps_a = seed_replicates(a, n_bootstrap, seed)[:, column]
    reps_b = seed_replicates(b, n_bootstrap, seed)[:, column]
    a_mean = float(np.mean([_point(r, _metric_key(metric)) for r in a]))
    b_mean = float(np.mean([_point(r, _metric_key(metric)) for r in b]))
    return metrics.bootstrap_difference(a_mean - b_mean, reps_a - reps_b, a_mean, b_mean, "unpaired bootstrap")


class SeedStats:
    """seed_summary of every configuration, computed once each (report, plots and HTML share it)."""

    def __init__(self, n_bootstrap: int = 1000, seed: int = 0):
        self.n_bootstrap, self.seed = n_bootstrap, seed
        self._cache: Dict[tuple, Optional[SeedSummary]] = {}

    def of(self, records: List[AttackRecord]) -> Optional[SeedSummary]:
        if not records:
            return None
        key = group_key(records[0]) + (tuple(sorted(r.seed for r in records)),)
        if key not in self._cache:
            self._cache[key] = seed_summary(records, self.n_bootstrap, self.seed)
        return self._cache[key]


def strongest(groups: Dict[tuple, List[AttackRecord]], stats: SeedStats,
              keep=lambda records: True) -> Optional[str]:
    """The attack variant with the highest AUC averaged over the given groups (mean over seeds,
    then over the groups it appears in), among the groups `keep` accepts."""
    by_variant: Dict[str, List[float]] = {}
    for records in groups.values():
        summary = stats.of(records)
        if summary is not None and keep(records):
            by_variant.setdefault(variant(records[0]), []).append(summary.auc)
    if not by_variant:
        return None
    return max(by_variant, key=lambda v: (np.mean(by_variant[v]), v))


# --- feature quality against leakage -------------------------------------------------------------

def encoder_of(results: Results, record: AttackRecord) -> Optional[EncoderRecord]:
    """The target encoder a record attacked (`Results.target_of`)."""
    return results.target_of(record)


def quality(encoder: Optional[EncoderRecord], defense: Optional[str] = None) -> Optional[dict]:
    """{"linear_probe", "knn"} of an encoder's backbone output (its first output without one);
    under a release-time `defense`, the quality of the defended release (measured on the
    undefended encoder's defended embeddings); None when unmeasured."""
    if encoder is None:
        return None
    q = encoder.defended_quality.get(defense) if defense and encoder.defense != defense else encoder.feature_quality
    if not q:
        return None
    return q.get("backbone") or next(iter(q.values()))


@dataclass
class LeakagePoint:
    """One (encoder, seed) of the correlation: its quality and one attack's leakage on it."""

    framework: str
    architecture: Optional[str]
    seed: int
    linear_probe: float
    knn: float
    auc: float
    tpr_1: float


def leakage_points(results: Results, records: Optional[List[AttackRecord]] = None) -> Dict[tuple, List[LeakagePoint]]:
    """{(output, attack variant): points} over every undefended (encoder, seed) attacked at the
    headline K: the main table, the reference-calibrated attacks and the architecture ladder."""
    k = headline_k(results)
    if records is None:
        records = [r for r in results.records if r.study in ("main", "references", "ladder")]
    records = dedupe(r for r in records if r.metrics and r.defense is None and (k is None or r.k == k))
    out: Dict[tuple, List[LeakagePoint]] = {}
    for r in records:
        q = quality(encoder_of(results, r))
        if q is None:
            continue
        out.setdefault((r.output, variant(r)), []).append(LeakagePoint(
            r.framework, r.architecture, r.seed, q["linear_probe"], q["knn"], r.auc, r.tpr_at(0.01)))
    return out


def spearman(x, y) -> Tuple[Optional[float], Optional[float]]:
    """(rho, p-value); (None, None) when undefined (fewer than 3 points or a constant column)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def _axes(points: List[LeakagePoint], main_architecture: Optional[str]) -> List[Tuple[str, List[LeakagePoint]]]:
    """(axis name, points): all points; the frameworks at the main architecture; each framework's
    architectures (when it has several)."""
    axes = [("all", points)]
    at_main = [p for p in points if p.architecture == main_architecture]
    if len({p.framework for p in at_main}) > 1 and len(at_main) < len(points):
        axes.append((f"frameworks ({main_architecture})", at_main))
    for fw in sorted({p.framework for p in points}):
        mine = [p for p in points if p.framework == fw]
        if len({p.architecture for p in mine}) > 1:
            axes.append((f"architectures ({fw})", mine))
    return axes


def correlation_rows(results: Results) -> List[dict]:
    """Spearman rho (with p-value) of feature quality against leakage per output, attack variant
    and axis; leakage is AUC and TPR at 1% FPR. Each row: output, variant, axis, n, frameworks,
    architectures, and rho/p for every (quality metric, leakage measure) pair."""
    rows = []
    main_architecture = headline_architecture(results)
    for (output, name), points in leakage_points(results).items():
        for axis, subset in _axes(points, main_architecture):
            row = {"output": output, "variant": name, "axis": axis, "n": len(subset),
                   "frameworks": sorted({p.framework for p in subset}),
                   "architectures": sorted({str(p.architecture) for p in subset})}
            for qm in QUALITY_METRICS:
                for lm in ("auc", "tpr_1"):
                    rho, p = spearman([getattr(s, qm) for s in subset], [getattr(s, lm) for s in subset])
                    row[f"{qm}/{lm}"] = {"rho": rho, "p_value": p}
            rows.append(row)
    return rows


def leakage_correlation(encoders: List[EncoderRecord], records: List[AttackRecord]) -> dict:
    """Spearman rank correlation between feature quality (backbone output) and AUC over every
    undefended (encoder, seed) point at the headline K (main, references and ladder studies).

    Returns {output: {attack variant: {quality_metric: {"rho", "p_value", "n", "frameworks"}}}};
    rho is None when it is undefined (fewer than 3 points or a constant column).
    """
    results = Results(encoders=list(encoders), records=list(records))
    out: dict = {}
    for (output, name), points in leakage_points(results).items():
        for qm in QUALITY_METRICS:
            rho, p = spearman([getattr(s, qm) for s in points], [s.auc for s in points])
            out.setdefault(output, {}).setdefault(name, {})[qm] = {
                "rho": rho, "p_value": p, "n": len(points), "frameworks": [s.framework for s in points]}
    return out
