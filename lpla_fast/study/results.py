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
RESULTS_VERSION = 2  # 2: typed records; encoders as a list of EncoderRecord (1: "frameworks" dict)
RESULTS_FILE = "results.json"


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

    @property
    def architecture(self) -> str:
        return architecture_name(self.backbone, self.width)

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderRecord":
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
    {"<framework>/<output>": file name}; plots: the PNG file names in plots/.
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
        return jsonable(d)

    @classmethod
    def from_dict(cls, d: dict) -> "Results":
        d = known_fields(cls, d)
        d["encoders"] = [EncoderRecord.from_dict(e) for e in d.get("encoders", [])]
        d["records"] = [AttackRecord.from_dict(r) for r in d.get("records", [])]
        return cls(**d)

    def save(self, path: str) -> None:
        """Write results.json atomically (a folder: results.json inside it)."""
        if os.path.isdir(path):
            path = os.path.join(path, RESULTS_FILE)
        write_json(path, self.to_dict())


def load_results(path: str) -> Results:
    """Read a results.json (or the run folder holding one) of this schema version."""
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
    if doc.get("version") != RESULTS_VERSION:
        raise ValueError(f"{path!r} is results version {doc.get('version')!r}; this lpla_fast reads version "
                         f"{RESULTS_VERSION}: rerun the command that made it")
    try:
        return Results.from_dict(doc)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path!r} does not match results version {RESULTS_VERSION}: {exc}") from exc
