"""The results of a study run (results.json): a versioned schema of typed records, one loader.

`Results` holds the run's settings and environment, one `EncoderRecord` per trained encoder
and one `AttackRecord` per attack fit (or skip); report, plots and the CLI read these
attributes, never raw JSON keys. `load_results` is the only reader of results.json: it
checks the schema name and version and says what is wrong with any other file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional

import numpy as np

from ..fileio import decode_float, jsonable, write_json
from .settings import ExperimentConfig, StudyConfig, known_fields

RESULTS_SCHEMA = "lpla_fast.experiment_results"
# 3: paired comparisons, pooled low-FPR numbers and the power analysis (version 2 files still load,
# without them); 2: typed records, encoders as a list of EncoderRecord (1: "frameworks" dict).
RESULTS_VERSION = 3
READABLE_VERSIONS = (2, 3)
RESULTS_FILE = "results.json"
SCORES_FILE = "scores.parquet"  # the per-sample scores beside results.json (written by `study.exports`)


@dataclass
class SampleScores:
    """The per-sample scores behind one AttackRecord's metrics. They are not stored in
    results.json (which stays small): the run writes them to scores.parquet and to Privacy
    Meter-style npz files (`study.exports`).

    sample: (n,) int64 indices of the evaluated samples in the dataset.
    is_member: (n,) bool, the truth.
    score: (n,) float64, the attack's score (larger = more likely a member).
    """

    sample: np.ndarray
    is_member: np.ndarray
    score: np.ndarray


@dataclass
class AttackRecord:
    """One attack fitted and scored at one point of the study (or the reason it was skipped).

    framework: the target's name (its framework in `lpla experiment`, --label in `lpla attack`).
    output: the representation attacked ("backbone" or "head").
    study: which table it belongs to: "main", "p", "k" or "knowledge".
    attack, level, k, p: the attack name, knowledge level, query budget and norm order (None for
        attacks without p).
    params: the attack's constructor parameters as used.
    metrics: `metrics.evaluate`'s dict (auc, balanced_accuracy, tpr_at_fpr, ci, counts), None if skipped.
    skipped: why the attack could not run at this point, else None.
    roc: {"fpr": [...], "tpr": [...]} (thinned), for the main table only.
    seconds: time of fit and scoring.
    evaluated: "all" members and non-members, or "audit_halves" (the knowledge sweep).
    seed: the seed of the run that trained the target (one per repeat).
    backbone: the target's backbone (None when unknown, e.g. attacked embedding files).
    width: the backbone's width (None: its default or unknown).
    defense: the defense applied (None: the undefended release); see `study.defenses`.
    samples: the per-sample scores (in memory only; not in results.json).
    """

    framework: str
    output: str
    study: str
    attack: str
    level: str
    k: int
    p: Optional[float] = None
    params: dict = field(default_factory=dict)
    metrics: Optional[dict] = None
    skipped: Optional[str] = None
    roc: Optional[Dict[str, list]] = None
    seconds: Optional[float] = None
    evaluated: str = "all"
    seed: int = 0
    backbone: Optional[str] = None
    width: Optional[int] = None
    defense: Optional[str] = None
    samples: Optional[SampleScores] = field(default=None, repr=False, compare=False)

    @property
    def auc(self) -> Optional[float]:
        return None if self.metrics is None else self.metrics["auc"]

    def tpr_at(self, fpr: float) -> Optional[float]:
        """TPR at the given FPR (0.001, 0.01 or 0.1), None when skipped."""
        return None if self.metrics is None else self.metrics["tpr_at_fpr"][str(fpr)]

    @property
    def architecture(self) -> Optional[str]:
        """"<backbone>-<width>" (e.g. "small_cnn-32"), the backbone alone without a width."""
        return architecture_name(self.backbone, self.width)

    def to_dict(self) -> dict:
        return jsonable({f.name: getattr(self, f.name) for f in fields(self) if f.name != "samples"})

    @classmethod
    def from_dict(cls, d: dict) -> "AttackRecord":
        d = known_fields(cls, d)
        if d.get("p") is not None:
            d["p"] = decode_float(d["p"])
        return cls(**d)


@dataclass
class EncoderRecord:
    """One trained encoder: how it was trained and, for a target, its feature quality.

    framework: the study's framework slot it belongs to (a shadow trained with another
        framework says so in train_config["framework"]).
    role: "target" or "shadow".
    backbone, width: its architecture (width None: the backbone's default).
    seed: the seed of the run (the training seed itself is in train_config).
    train_config: its TrainConfig as a dict.
    seconds, epochs, epochs_reused, reused, final_loss: the training (reused: loaded finished
        from the run folder).
    feature_quality: {output: {"linear_probe": acc, "knn": acc, ...}} (targets only).
    embed_dim: {output: D} (targets only).
    audit_split: the AuditSplit indices of the audit level (targets only).
    defense: the training-time defense it was trained under (None: the plain recipe).
    members: how many samples it was trained on.
    defended_quality: {release defense: {output: feature quality of the defended release}}
        (targets of the defense table only).
    privacy: DP-SGD encoders only: what the accountant spent (epsilon, delta, noise_multiplier,
        max_grad_norm, sample_rate, steps, accountant, guarantee); None otherwise.
    """

    framework: str
    role: str
    backbone: str
    width: Optional[int] = None
    seed: int = 0
    train_config: dict = field(default_factory=dict)
    seconds: float = 0.0
    epochs: int = 0
    epochs_reused: int = 0
    reused: bool = False
    final_loss: Optional[float] = None
    feature_quality: Dict[str, dict] = field(default_factory=dict)
    embed_dim: Dict[str, int] = field(default_factory=dict)
    audit_split: Optional[dict] = None
    defense: Optional[str] = None
    members: int = 0
    defended_quality: Dict[str, Dict[str, dict]] = field(default_factory=dict)
    privacy: Optional[dict] = None

    @property
    def architecture(self) -> str:
        return architecture_name(self.backbone, self.width)

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderRecord":
        return cls(**known_fields(cls, d))


@dataclass
class Comparison:
    """One comparison the report makes, as a difference a - b of a metric with its 95% interval.

    claim: "attack" (the strongest LpLA-family attack against the best baseline), "defense" (a
        defense against no defense, for one attack) or "ladder" (one architecture against the
        next narrower one, for one attack).
    framework, output, k: where it was measured.
    a, b: what is compared, as printed (attack labels, defense specs or architectures);
        attack: the attack variant of a defense or ladder comparison (None for "attack").
    metric: "auc" (or an FPR key for a TPR).
    difference, low, high, p_value: the estimate, its interval and two-sided p-value;
        p_holm: p_value Holm-adjusted over every comparison of the report; a_value, b_value:
        the metric of each side (means over seeds).
    method: "delong" (one seed), "paired hierarchical bootstrap" (seeds, then the same resample of
        members and non-members for both) or "unpaired bootstrap" (different encoders or samples:
        each side resampled on its own). paired: whether a and b were scored on the same targets
        and samples.
    seeds: seeds compared; n_members, n_nonmembers: evaluated per seed.
    verdict: "higher" / "lower" (a against b, significant after Holm at 5%), "tie" (the interval
        lies within +-TIE_MARGIN) or "undecided".
    per_seed: each seed's own paired difference {"seed", "difference", "low", "high", "p_value"}
        (DeLong for the AUC), empty when unpaired.
    """

    claim: str
    framework: str
    output: str
    k: int
    a: str
    b: str
    difference: float
    low: float
    high: float
    p_value: float
    a_value: float
    b_value: float
    method: str
    paired: bool
    seeds: int
    attack: Optional[str] = None
    metric: str = "auc"
    p_holm: Optional[float] = None
    verdict: str = "undecided"
    n_members: int = 0
    n_nonmembers: int = 0
    per_seed: List[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "Comparison":
        return cls(**known_fields(cls, d))


@dataclass
class PooledTPR:
    """Low-FPR numbers of a reference-calibrated attack over the scores of every seed's target
    pooled into one evaluated set (their calibrated scores are comparable across targets, as
    LiRA pools over many targets), beside the per-target means.

    tpr_at_fpr: {"0.001", "0.01", "0.1"}: the pooled TPR, None where the pooled set has fewer
    non-members than `metrics.min_negatives` asks."""

    framework: str
    output: str
    k: int
    variant: str
    label: str
    seeds: int
    n_members: int
    n_nonmembers: int
    auc: float
    tpr_at_fpr: Dict[str, Optional[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "PooledTPR":
        return cls(**known_fields(cls, d))


@dataclass
class PowerAnalysis:
    """What this run can detect (`study.power`): the variance components of the paired AUC
    differences of the attack comparisons and the sizes they imply.

    comparisons: paired attack comparisons the components come from; n_members, n_nonmembers,
    seeds: this run's sizes per target; within: the mean per-seed DeLong variance of a difference
    at these sizes; between: the variance of the seeds' true differences (the spread of the
    per-seed differences beyond what `within` explains, at least 0); detectable: the smallest
    difference this run detects with `power` (two-sided `alpha`); target: the difference asked
    for; plans: [{"members", "seeds", "detectable"}] sizes (members = non-members per target)
    that reach `target`."""

    comparisons: int
    n_members: int
    n_nonmembers: int
    seeds: int
    within: float
    between: float
    detectable: float
    target: float = 0.02
    alpha: float = 0.05
    power: float = 0.8
    plans: List[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "PowerAnalysis":
        return cls(**known_fields(cls, d))


@dataclass
class EmpiricalEpsilon:
    """The lower bound on epsilon that an attack proves on DP-SGD encoders (`metrics.empirical_epsilon`,
    Clopper-Pearson at 95%, delta 1e-5), beside the epsilon the accountant spent.

    framework, output, defense ("dp:<epsilon>"), attack (its label); accountant: the defense's target
    epsilon; spent: the epsilon the accountant spent on each seed's encoder (its EncoderRecord's
    privacy; None where not recorded); per_seed: each seed's bound; max_provable: the largest bound
    this many samples can prove (`metrics.max_provable_epsilon`)."""

    framework: str
    output: str
    defense: str
    attack: str
    accountant: float
    per_seed: List[float]
    n_members: int
    n_nonmembers: int
    max_provable: float
    delta: float = 1e-5
    spent: List[Optional[float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "EmpiricalEpsilon":
        return cls(**known_fields(cls, d))


def architecture_name(backbone: Optional[str], width: Optional[int]) -> Optional[str]:
    if backbone is None:
        return None
    return backbone if width is None else f"{backbone}-{width}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Results:
    """Everything a run measured, as written to results.json.

    command: "experiment" or "attack"; config: ExperimentConfig.to_dict() (experiment) or
    {"study": StudyConfig.to_dict()} (attack); inputs: the files attacked (attack only);
    dataset, splits: the data (experiment only); correlation: `stats.leakage_correlation`;
    timings: {"stages": {stage: seconds}, "total": seconds}; calibration_files:
    {"<framework>/<output>": file name}; plots: the PNG file names in plots/; comparisons: the
    report's paired comparisons (`study.comparisons`); pooled: pooled low-FPR numbers of the
    reference-calibrated attacks; power: what the run can detect (`study.power`);
    empirical_epsilon: the epsilon the strongest attack proves on each DP-SGD defense.
    """

    schema: str = RESULTS_SCHEMA
    version: int = RESULTS_VERSION
    command: str = "experiment"
    created: str = field(default_factory=_now)
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    dataset: Optional[dict] = None
    splits: Dict[str, int] = field(default_factory=dict)
    inputs: Dict[str, Optional[str]] = field(default_factory=dict)
    encoders: List[EncoderRecord] = field(default_factory=list)
    records: List[AttackRecord] = field(default_factory=list)
    correlation: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    calibration_files: Dict[str, str] = field(default_factory=dict)
    plots: List[str] = field(default_factory=list)
    comparisons: List[Comparison] = field(default_factory=list)
    pooled: List[PooledTPR] = field(default_factory=list)
    power: Optional[PowerAnalysis] = None
    empirical_epsilon: List[EmpiricalEpsilon] = field(default_factory=list)

    @property
    def study(self) -> StudyConfig:
        """The attack stage's settings."""
        return StudyConfig.from_dict(self.config["study"])

    @property
    def experiment(self) -> Optional[ExperimentConfig]:
        """The whole study's settings (None for an `lpla attack` run)."""
        return ExperimentConfig.from_dict(self.config) if self.command == "experiment" else None

    def select(self, **keys) -> List[AttackRecord]:
        """The records whose attributes equal every given value, e.g. select(study="main")."""
        return [r for r in self.records if all(getattr(r, k) == v for k, v in keys.items())]

    def targets(self) -> List[EncoderRecord]:
        return [e for e in self.encoders if e.role == "target"]

    def target_of(self, record: AttackRecord) -> Optional[EncoderRecord]:
        """The target encoder a record attacked: same framework and seed, same architecture when
        the record names one, and its training-time defense (or the undefended encoder, for a
        defense applied at release); None when the run trained none."""
        candidates = [e for e in self.targets() if e.framework == record.framework and e.seed == record.seed
                      and (record.backbone is None or (e.backbone, e.width) == (record.backbone, record.width)
                           or (e.backbone == record.backbone and record.width is None))]
        for wanted in (record.defense, None) if record.defense else (None,):
            match = [e for e in candidates if e.defense == wanted]
            if match:
                return match[0]
        return None

    def to_dict(self) -> dict:
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        d["encoders"] = [e.to_dict() for e in self.encoders]
        d["records"] = [r.to_dict() for r in self.records]
        d["comparisons"] = [c.to_dict() for c in self.comparisons]
        d["pooled"] = [p.to_dict() for p in self.pooled]
        d["power"] = None if self.power is None else self.power.to_dict()
        d["empirical_epsilon"] = [e.to_dict() for e in self.empirical_epsilon]
        return jsonable(d)

    @classmethod
    def from_dict(cls, d: dict) -> "Results":
        d = known_fields(cls, d)
        d["encoders"] = [EncoderRecord.from_dict(e) for e in d.get("encoders", [])]
        d["records"] = [AttackRecord.from_dict(r) for r in d.get("records", [])]
        d["comparisons"] = [Comparison.from_dict(c) for c in d.get("comparisons", [])]
        d["pooled"] = [PooledTPR.from_dict(p) for p in d.get("pooled", [])]
        d["power"] = PowerAnalysis.from_dict(d["power"]) if d.get("power") else None
        d["empirical_epsilon"] = [EmpiricalEpsilon.from_dict(e) for e in d.get("empirical_epsilon", [])]
        d["version"] = RESULTS_VERSION  # read as this version (an older file lacks only the newer fields)
        return cls(**d)

    def save(self, path: str) -> None:
        """Write results.json atomically (a folder: results.json inside it)."""
        if os.path.isdir(path):
            path = os.path.join(path, RESULTS_FILE)
        write_json(path, self.to_dict())


def load_results(path: str, scores: bool = True) -> Results:
    """Read a results.json (or the run folder holding one) of this schema version or an older
    readable one. With `scores`, each record's per-sample scores are read back from the
    scores.parquet beside it (when there is one), so the paired comparisons can be recomputed."""
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no results file at {path!r}")
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path!r} is not an lpla_fast results file (not JSON: {exc})") from exc
    if not isinstance(doc, dict) or doc.get("schema") != RESULTS_SCHEMA:
        schema = doc.get("schema") if isinstance(doc, dict) else None
        raise ValueError(f"{path!r} is not an lpla_fast results file (schema {schema!r}, expected {RESULTS_SCHEMA!r})")
    if doc.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{path!r} is results version {doc.get('version')!r}; this lpla_fast reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}: rerun the command that made it")
    try:
        results = Results.from_dict(doc)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path!r} does not match results version {doc.get('version')}: {exc}") from exc
    scores_path = os.path.join(os.path.dirname(path), SCORES_FILE)
    if scores and os.path.isfile(scores_path):
        attach_scores(results, scores_path)
    return results


# The key columns of scores.parquet that name a row's record (`study.exports.scores_table`).
SCORE_KEYS = ("framework", "output", "study", "attack", "level", "k", "defense", "evaluated", "seed")


def attach_scores(results: Results, path: str) -> int:
    """Give each scored record its per-sample scores from a scores.parquet written with these
    results (rows in record order, each record's block as long as its evaluated set). Returns how
    many records got them; a file that does not line up with the records attaches nothing."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=list(SCORE_KEYS) + ["sample", "is_member", "score"])
    scored = [r for r in results.records if r.metrics]
    lengths = np.array([int(r.metrics["n_members"]) + int(r.metrics["n_nonmembers"]) for r in scored], np.int64)
    ends = np.cumsum(lengths)
    if not scored or ends[-1] != table.num_rows:
        return 0  # not the file these records were written with: attach nothing rather than misalign
    starts = ends - lengths
    heads = table.select(list(SCORE_KEYS)).take(starts).to_pylist()
    if any(head[key] != getattr(r, key) for r, head in zip(scored, heads) for key in SCORE_KEYS):
        return 0
    sample = table.column("sample").to_numpy().astype(np.int64)
    is_member = table.column("is_member").to_numpy().astype(bool)
    score = table.column("score").to_numpy().astype(np.float64)
    for r, a, b in zip(scored, starts, ends):
        r.samples = SampleScores(sample=sample[a:b], is_member=is_member[a:b], score=score[a:b])
    return len(scored)
