"""The main study behind `lpla experiment`: the performance-privacy trade-off.

For each contrastive framework it trains a target and a shadow encoder (cached in the run
folder: a rerun with the same config reuses finished encoders and resumes unfinished ones),
measures the target's feature quality, queries K augmented views of every split once at the
largest K (smaller budgets are slices of it), and attacks the target's members and
non-members with every attack. Then it sweeps p, K and the attacker's knowledge level, and
correlates feature quality with leakage across frameworks. Everything goes to one run folder:

    config.json, splits.json               what made the run
    encoders/<framework>/<role>/           the trained encoders (role: target, shadow)
    embeddings/<framework>/*.npy           view embeddings (only with save_embeddings)
    calibration-<framework>[-head].json    fitted LpLA calibrations, for `lpla score`
    results.json, report.md, plots/*.png   every number, the report, the figures

`attack_study` is the attack half alone: it starts from view embeddings (a `ViewSet`) and is
shared with `lpla attack`, which reads them from files.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from . import metrics
from .attacks import ATTACKS, AttackerKnowledge, make_attack
from .attacks.base import LEVELS
from .fileio import decode_float, encode_float, write_json
from .splits import SPLIT_NAMES, SplitSizes
from .validation import as_views, check_same_dim

FRAMEWORKS = ("simclr", "moco", "byol", "simsiam", "barlowtwins")
OUTPUTS = ("backbone", "head")
ROLES = ("target", "shadow")
# Attacks that have a reference-only mode (known non-members, no labels); the others need
# labelled members and non-members.
REFERENCE_CAPABLE = ("lpla", "norm")
# Attacks whose statistic is an Lp-norm, swept over p.
P_ATTACKS = ("lpla", "norm")
# Each split's views get their own seed; target and shadow query a split with the same seed.
_VIEW_SEED = {name: 1000 * (i + 1) for i, name in enumerate(SPLIT_NAMES)}
_ROLE_SEED = {"target": 0, "shadow": 1}
RESULTS_SCHEMA = "lpla_fast.experiment_results"
RESULTS_VERSION = 1


# --- configuration ------------------------------------------------------------------------

@dataclass
class StudyConfig:
    """What the attack stage runs (shared by `lpla experiment` and `lpla attack`).

    attacks: the main table's attacks, each at knowledge `level` and query budget `k`.
    k: the default query budget (views per sample).
    ks: query budgets of the K sweep; ps: norm orders of the p sweep (LpLA and norm threshold).
    levels: knowledge levels of the knowledge sweep.
    sweep_attacks: attacks in the K and knowledge sweeps (those in P_ATTACKS also in the p sweep).
    level: knowledge level of the main table.
    n_bootstrap: bootstrap replicates of each 95% confidence interval.
    attack_params: extra constructor parameters per attack name, e.g. {"knn": {"k": 5}}.
    seed: seed of the audit halves and of the bootstrap.
    """

    attacks: Tuple[str, ...] = ATTACKS
    k: int = 8
    ks: Tuple[int, ...] = (1, 2, 4, 8, 16)
    ps: Tuple[float, ...] = (1.0, 2.0, math.inf)
    levels: Tuple[str, ...] = LEVELS
    sweep_attacks: Tuple[str, ...] = ("lpla", "norm", "encodermi-t", "knn")
    level: str = "shadow"
    n_bootstrap: int = 1000
    attack_params: Dict[str, dict] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self):
        self.attacks, self.sweep_attacks = tuple(self.attacks), tuple(self.sweep_attacks)
        self.ks, self.levels = tuple(int(k) for k in self.ks), tuple(self.levels)
        self.ps = tuple(decode_float(p) for p in self.ps)
        for name in self.attacks + self.sweep_attacks + tuple(self.attack_params):
            if name not in ATTACKS:
                raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
        for level in self.levels + (self.level,):
            if level not in LEVELS:
                raise ValueError(f"unknown knowledge level {level!r}; choose from {', '.join(LEVELS)}")
        if int(self.k) != self.k or self.k < 1 or any(k < 1 for k in self.ks):
            raise ValueError(f"query budgets must be integers >= 1, got k={self.k!r}, ks={self.ks}")
        if any(not p > 0 for p in self.ps):
            raise ValueError(f"every p must be in (0, inf], got ps={self.ps}")
        if self.n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be >= 0, got {self.n_bootstrap}")

    @property
    def max_k(self) -> int:
        return max((self.k,) + self.ks)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ps"] = [encode_float(p) for p in self.ps]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StudyConfig":
        return cls(**_known_fields(cls, d))


@dataclass
class ExperimentConfig:
    """The whole study. The defaults are the built-in job: digits, a width-32 small CNN, the
    five frameworks, the encoders' digits training recipe (about 200 members, 300 epochs).

    dataset, data_root, image_size: what `lpla_fast.data.load_dataset` reads.
    frameworks: the target encoders' frameworks; shadow_framework: the shadow encoders'
        (None: the same as each target, the usual shadow-model assumption).
    backbone, width, epochs, batch_size, lr, amp: training settings; None keeps the
        TrainConfig default.
    device: "auto", "cpu", "cuda" or "cuda:i", for training and queries.
    seed: seeds splits, training (target: seed, shadow: seed + 1) and view queries.
    sizes: the split sizes.
    outputs: released representations attacked: "backbone" and/or "head" (projection head).
    view_policy: augmentation of the attacker's queries ("default": the training one);
        include_clean: view 1 of every query is the unaugmented image.
    save_embeddings: also write every split's view embeddings (N, K, D) as .npy.
    study: the attack stage.
    """

    dataset: str = "digits"
    data_root: Optional[str] = None
    image_size: Optional[int] = None
    frameworks: Tuple[str, ...] = FRAMEWORKS
    shadow_framework: Optional[str] = None
    backbone: str = "small_cnn"
    width: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    amp: bool = False
    device: str = "auto"
    seed: int = 0
    sizes: SplitSizes = field(default_factory=SplitSizes)
    outputs: Tuple[str, ...] = OUTPUTS
    view_policy: str = "default"
    include_clean: bool = True
    save_embeddings: bool = False
    study: StudyConfig = field(default_factory=StudyConfig)

    def __post_init__(self):
        self.frameworks, self.outputs = tuple(self.frameworks), tuple(self.outputs)
        if not self.frameworks:
            raise ValueError("frameworks is empty; name at least one of " + ", ".join(FRAMEWORKS))
        for name in self.frameworks + ((self.shadow_framework,) if self.shadow_framework else ()):
            if name not in FRAMEWORKS:
                raise ValueError(f"unknown framework {name!r}; choose from {', '.join(FRAMEWORKS)}")
        if len(set(self.frameworks)) != len(self.frameworks):
            raise ValueError(f"frameworks has duplicates: {self.frameworks}")
        if not self.outputs or any(o not in OUTPUTS for o in self.outputs):
            raise ValueError(f"outputs must be a non-empty subset of {OUTPUTS}, got {self.outputs}")
        if self.epochs is not None and self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")

    @classmethod
    def quick(cls, **overrides) -> "ExperimentConfig":
        """A run of about a minute on a CPU, for tests and trying things out: two frameworks,
        tiny encoders trained for two epochs, a few dozen samples per split, K up to 4."""
        base = dict(
            frameworks=("simclr", "byol"), width=8, epochs=2, batch_size=32,
            sizes=SplitSizes(target_members=40, target_nonmembers=40, shadow_members=40,
                             shadow_nonmembers=40, reference=40, probe_train=60, probe_test=60),
            study=StudyConfig(k=4, ks=(1, 2, 4), n_bootstrap=100, attack_params={"knn": {"k": 5}}),
        )
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["study"] = self.study.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        d = _known_fields(cls, d)
        if isinstance(d.get("sizes"), dict):
            d["sizes"] = SplitSizes(**d["sizes"])
        if isinstance(d.get("study"), dict):
            d["study"] = StudyConfig.from_dict(d["study"])
        return cls(**d)

    def train_config(self, framework: str, role: str, image_size: int):
        """The TrainConfig of one encoder (role "target" or "shadow")."""
        from .augment import policy_for_dataset
        from .encoders import TrainConfig

        overrides = {name: getattr(self, name) for name in ("width", "epochs", "batch_size", "lr")
                     if getattr(self, name) is not None}
        if role == "shadow" and self.shadow_framework:
            framework = self.shadow_framework
        return TrainConfig(framework=framework, backbone=self.backbone, image_size=int(image_size),
                           seed=self.seed + _ROLE_SEED[role], device=self.device, amp=self.amp,
                           dataset=self.dataset, augmentation=policy_for_dataset(self.dataset), **overrides)


def _known_fields(cls, d: dict) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__} must be read from a JSON object, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return dict(d)


# --- the views an attack stage works on ---------------------------------------------------------

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
    """

    members: Tensor
    nonmembers: Tensor
    target_reference: Optional[Tensor] = None
    shadow_members: Optional[Tensor] = None
    shadow_nonmembers: Optional[Tensor] = None
    shadow_reference: Optional[Tensor] = None

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
                          for name in _VIEW_FIELDS})


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
                                 shadow_reference=views.shadow_reference, target_reference=views.target_reference)
    if audit is None:
        raise ValueError("knowledge level 'audit' needs an AuditSplit")
    return AttackerKnowledge(level="audit", target_training=views.members[audit.bank],
                             calibration_members=views.members[audit.calibration_members],
                             calibration_nonmembers=views.nonmembers[audit.calibration_nonmembers],
                             target_reference=views.target_reference)


# --- the attack stage ----------------------------------------------------------------------------

def _attack_params(study: StudyConfig, name: str, views: ViewSet, p: Optional[float] = None) -> dict:
    params = dict(study.attack_params.get(name, {}))
    if name in P_ATTACKS:
        if p is not None:
            params["p"] = p
        if not views.has_references:
            # Standardization needs each encoder's reference non-members.
            params["standardize"] = False
    return params


def _skip_reason(name: str, level: str, k: int, views: ViewSet) -> Optional[str]:
    attack = make_attack(name)
    if k < attack.min_views:
        return f"needs K >= {attack.min_views}"
    if level == "reference" and name not in REFERENCE_CAPABLE:
        return "needs labelled members and non-members"
    if level == "reference" and views.target_reference is None:
        return "no reference embeddings given"
    if level == "shadow" and not views.has_shadow:
        return "no shadow embeddings given"
    if name == "knn" and level == "shadow" and not views.has_references:
        return "needs reference embeddings as its neighbour bank"
    return None


def _thin_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 600) -> Tuple[list, list]:
    """At most ~max_points ROC points, spread evenly in log FPR (what the log-log plot shows)."""
    if fpr.size > max_points:
        grid = np.concatenate([[0.0], np.logspace(-6, 0, max_points)])
        keep = np.unique(np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, fpr.size - 1))
        fpr, tpr = fpr[keep], tpr[keep]
    return [round(float(x), 6) for x in fpr], [round(float(x), 6) for x in tpr]


def _run_one(study: StudyConfig, name: str, level: str, k: int, views: ViewSet, eval_members: Tensor,
             eval_nonmembers: Tensor, audit: Optional[AuditSplit], p: Optional[float] = None,
             want_roc: bool = False):
    """Fit one attack at (level, k, p), score the evaluated samples: (record, fitted attack)."""
    params = _attack_params(study, name, views, p)
    record = {"attack": name, "level": level, "k": int(k), "p": None, "params": {}, "metrics": None,
              "skipped": _skip_reason(name, level, k, views)}
    if record["skipped"]:
        return record, None
    start = time.perf_counter()
    attack = make_attack(name, **params)
    record["params"] = attack.get_params()
    record["p"] = record["params"].get("p")
    sliced = views.sliced(k)
    attack.fit(make_knowledge(sliced, level, audit))
    scores = np.concatenate([attack.score(eval_members[:, :k]), attack.score(eval_nonmembers[:, :k])])
    labels = np.concatenate([np.ones(len(eval_members), bool), np.zeros(len(eval_nonmembers), bool)])
    record["metrics"] = metrics.evaluate(scores, labels, n_bootstrap=study.n_bootstrap, seed=study.seed)
    if want_roc:
        record["roc"] = dict(zip(("fpr", "tpr"), _thin_roc(*metrics.roc_curve(scores, labels))))
    record["seconds"] = round(time.perf_counter() - start, 4)
    return record, attack


def _plan(study: StudyConfig, max_k: int) -> List[dict]:
    """Every (study, attack, level, k, p) to run: the main table, then the sweeps."""
    k = min(study.k, max_k)
    jobs = [dict(study="main", attack=a, level=study.level, k=k) for a in study.attacks]
    jobs += [dict(study="p", attack=a, level=study.level, k=k, p=p)
             for a in study.sweep_attacks if a in P_ATTACKS for p in study.ps]
    jobs += [dict(study="k", attack=a, level=study.level, k=kk)
             for a in study.sweep_attacks for kk in study.ks if kk <= max_k]
    jobs += [dict(study="knowledge", attack=a, level=lvl, k=k)
             for a in study.sweep_attacks for lvl in study.levels]
    return jobs


def attack_study(views: ViewSet, study: StudyConfig, label: str = "embeddings", output: str = "backbone",
                 progress: bool = True) -> dict:
    """Run every attack of the study on one target's views.

    The main table and the p and K sweeps evaluate all of the target's members and
    non-members. The knowledge sweep evaluates every level on the same held-out halves
    (AuditSplit), since the audit level calibrates on the other halves; its numbers are
    therefore comparable across levels but not identical to the main table's.

    Returns {"records": [...], "calibration": LpLACalibration dict or None, "audit_split": ...};
    each record holds framework (label), output, study, attack, level, k, p, params, metrics
    (metrics.evaluate's dict) or skipped (the reason), and for the main table the ROC curve.
    """
    from tqdm.auto import tqdm

    audit = AuditSplit.draw(len(views.members), len(views.nonmembers), study.seed)
    held_out = (views.members[audit.eval_members], views.nonmembers[audit.eval_nonmembers])
    records, calibration = [], None
    jobs = _plan(study, views.max_k)
    for job in tqdm(jobs, desc=f"attacks {label}/{output}", unit="fit", disable=not progress, leave=False):
        evaluated = held_out if job["study"] == "knowledge" else (views.members, views.nonmembers)
        record, attack = _run_one(study, job["attack"], job["level"], job["k"], views, *evaluated, audit,
                                  p=job.get("p"), want_roc=job["study"] == "main")
        record.update(framework=label, output=output, study=job["study"],
                      evaluated="audit_halves" if job["study"] == "knowledge" else "all")
        records.append(record)
        if job["study"] == "main" and job["attack"] == "lpla" and attack is not None:
            calibration = getattr(attack, "calibration_", None)
    return {"records": records, "calibration": None if calibration is None else calibration.to_dict(),
            "audit_split": audit.to_dict()}


# --- correlation across frameworks ------------------------------------------------------------------

def leakage_correlation(quality: Dict[str, dict], records: List[dict]) -> dict:
    """Spearman rank correlation between feature quality and attack AUC across frameworks.

    quality: {framework: {"backbone": {"linear_probe": .., "knn": ..}, ...}}.
    Returns {output: {attack: {quality_metric: {"rho", "p_value", "n"}}}}; rho is None when it
    is undefined (fewer than 3 frameworks or a constant column).
    """
    from scipy.stats import spearmanr

    out: dict = {}
    main = [r for r in records if r["study"] == "main" and r.get("metrics")]
    for output in sorted({r["output"] for r in main}):
        for attack in sorted({r["attack"] for r in main if r["output"] == output}):
            rows = [r for r in main if r["output"] == output and r["attack"] == attack
                    and r["framework"] in quality]
            for metric in ("linear_probe", "knn"):
                x = [quality[r["framework"]]["backbone"][metric] for r in rows]
                y = [r["metrics"]["auc"] for r in rows]
                rho = p_value = None
                if len(rows) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
                    result = spearmanr(x, y)
                    rho, p_value = float(result.statistic), float(result.pvalue)
                out.setdefault(output, {}).setdefault(attack, {})[metric] = {
                    "rho": rho, "p_value": p_value, "n": len(rows),
                    "frameworks": [r["framework"] for r in rows]}
    return out


# --- the pipeline -----------------------------------------------------------------------------------

class _Stages:
    """Stage lines on stderr with elapsed time, and the seconds each stage took."""

    def __init__(self, progress: bool, command: str = "experiment"):
        self.progress = progress
        self.command = command
        self.start = time.perf_counter()
        self.seconds: Dict[str, float] = {}

    def say(self, message: str) -> None:
        if self.progress:
            elapsed = time.perf_counter() - self.start
            print(f"[lpla {self.command} {int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {message}",
                  file=sys.stderr, flush=True)

    def timed(self, key: str, message: str):
        stages = self

        class _Timer:
            def __enter__(self):
                stages.say(message)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                stages.seconds[key] = round(stages.seconds.get(key, 0.0) + time.perf_counter() - self.t0, 3)

        return _Timer()


def head_views(encoder, backbone_views: Tensor, batch_size: int = 8192) -> Tensor:
    """Projection-head outputs of backbone view embeddings (N, K, D) -> (N, K, D_head).

    Encoder.embed(x, "head") is head(backbone(x)), so this equals querying the head output
    with the same views, without a second pass through the backbone.
    """
    from .encoders.base import evaluating

    n, k, d = backbone_views.shape
    device = next(encoder.parameters()).device
    flat = backbone_views.reshape(n * k, d)
    with evaluating(encoder):
        parts = [encoder.head(flat[i:i + batch_size].to(device)).float().cpu()
                 for i in range(0, n * k, batch_size)]
    return torch.cat(parts).reshape(n, k, -1)


def _train_or_reuse(images: Tensor, train_config, folder: str, progress: bool) -> Tuple[object, dict]:
    """Train an encoder with its checkpoints in `folder`; a finished one is loaded as is."""
    from .encoders import train_encoder
    from .encoders.checkpoint import read_config

    done_before = 0
    if os.path.isfile(os.path.join(folder, "config.json")):
        done_before = int(read_config(folder).get("epochs_done", 0))
    start = time.perf_counter()
    try:
        encoder = train_encoder(images, train_config, checkpoint_dir=folder, progress=progress)
    except ValueError as exc:
        if "different config" in str(exc):
            raise ValueError(f"{exc}. This run folder was made with other settings: pass another --out") from exc
        raise
    info = {"seconds": round(time.perf_counter() - start, 3), "epochs": train_config.epochs,
            "epochs_reused": min(done_before, train_config.epochs),
            "reused": done_before >= train_config.epochs,
            "final_loss": encoder.history_[-1] if encoder.history_ else None}
    return encoder, info


def query_split_views(encoder, images: Tensor, splits, names: Tuple[str, ...], outputs: Tuple[str, ...], k: int,
                      policy: str = "default", seed: int = 0, include_clean: bool = True) -> Dict[str, Dict[str, Tensor]]:
    """{output: {split: (N, k, D)}} view embeddings of the named splits under one encoder.

    Each split's views have their own seed (seed + an offset per split name), so a target
    and its shadow see the same views of the reference split.
    """
    from .encoders import query_views

    out: Dict[str, Dict[str, Tensor]] = {o: {} for o in outputs}
    for name in names:
        backbone = query_views(encoder, images[torch.as_tensor(splits[name])], K=k, policy=policy,
                               seed=seed + _VIEW_SEED[name], include_clean=include_clean, output="backbone")
        if "backbone" in out:
            out["backbone"][name] = backbone
        if "head" in out:
            out["head"][name] = head_views(encoder, backbone)
    return out


def _query_all(encoder, images: Tensor, splits, names: Tuple[str, ...], config: ExperimentConfig):
    return query_split_views(encoder, images, splits, names, config.outputs, config.study.max_k,
                             config.view_policy, config.seed, config.include_clean)


def _save_embeddings(folder: str, role: str, views: Dict[str, Dict[str, Tensor]]) -> None:
    os.makedirs(folder, exist_ok=True)
    for output, by_split in views.items():
        for split, tensor in by_split.items():
            np.save(os.path.join(folder, f"{role}-{split}-{output}.npy"), tensor.numpy())


def _environment(device: str) -> dict:
    import lpla_fast

    return {"lpla_fast": lpla_fast.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": device, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "built_with_cuda": lpla_fast.built_with_cuda(),
            # Other work on the machine slows every stage; the timings are read against it.
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def run_experiment(config: Optional[ExperimentConfig] = None, out_dir: str = "runs/experiment",
                   progress: bool = True) -> dict:
    """Run the whole study into `out_dir` and return the results dict (also in results.json).

    Stages: load the dataset; draw and save the splits; per framework, train (or reuse) the
    target and shadow encoders, measure the target's feature quality (backbone and head), query
    views of every split once at the largest K, and run `attack_study` for each output; then the
    quality-leakage correlation, results.json, report.md and the plots.
    """
    from .data import load_dataset
    from .encoders import feature_quality
    from .encoders.training import resolve_device
    from .splits import make_splits

    config = config or ExperimentConfig()
    stages = _Stages(progress)
    os.makedirs(out_dir, exist_ok=True)
    _write_json(os.path.join(out_dir, "config.json"), config.to_dict())
    device = str(resolve_device(config.device))

    with stages.timed("load_data", f"loading dataset {config.dataset!r}"):
        data = load_dataset(config.dataset, config.data_root, config.image_size)
    with stages.timed("splits", f"drawing splits (seed {config.seed}) from {len(data)} samples"):
        splits = make_splits(len(data), config.sizes, config.seed).check_disjoint()
        splits.to_json(os.path.join(out_dir, "splits.json"))

    image_size = int(data.images.shape[-1])
    frameworks, records, calibrations = {}, [], {}
    target_splits = ("target_members", "target_nonmembers", "reference")
    shadow_splits = ("shadow_members", "shadow_nonmembers", "reference")
    for i, framework in enumerate(config.frameworks, 1):
        tag = f"[{i}/{len(config.frameworks)}] {framework}"
        info: dict = {"train": {}, "timings": {}}
        encoders = {}
        for role, member_split in (("target", "target_members"), ("shadow", "shadow_members")):
            train_config = config.train_config(framework, role, image_size)
            with stages.timed(f"train/{framework}/{role}", f"{tag}: training the {role} encoder "
                              f"({train_config.framework}, {train_config.backbone}, {train_config.epochs} epochs, "
                              f"{len(splits[member_split])} members)"):
                encoders[role], info["train"][role] = _train_or_reuse(
                    data.images[torch.as_tensor(splits[member_split])], train_config,
                    os.path.join(out_dir, "encoders", framework, role), progress)
            info["train"][role]["config"] = train_config.to_dict()
        target = encoders["target"]
        with stages.timed(f"quality/{framework}", f"{tag}: feature quality (linear probe, kNN)"):
            probe = [data.subset(splits[s]) for s in ("probe_train", "probe_test")]
            info["feature_quality"] = {
                output: feature_quality(target, probe[0].images, probe[0].labels, probe[1].images, probe[1].labels,
                                        output=output) for output in config.outputs}
        with stages.timed(f"views/{framework}", f"{tag}: querying K={config.study.max_k} views of every split"):
            target_views = _query_all(target, data.images, splits, target_splits, config)
            shadow_views = _query_all(encoders["shadow"], data.images, splits, shadow_splits, config)
            if config.save_embeddings:
                folder = os.path.join(out_dir, "embeddings", framework)
                _save_embeddings(folder, "target", target_views)
                _save_embeddings(folder, "shadow", shadow_views)
        info["embed_dim"] = {o: int(target_views[o]["target_members"].shape[-1]) for o in config.outputs}
        for output in config.outputs:
            views = ViewSet(members=target_views[output]["target_members"],
                            nonmembers=target_views[output]["target_nonmembers"],
                            target_reference=target_views[output]["reference"],
                            shadow_members=shadow_views[output]["shadow_members"],
                            shadow_nonmembers=shadow_views[output]["shadow_nonmembers"],
                            shadow_reference=shadow_views[output]["reference"])
            with stages.timed(f"attacks/{framework}/{output}", f"{tag}: attacks and sweeps on the {output} output"):
                result = attack_study(views, config.study, label=framework, output=output, progress=progress)
            records += result["records"]
            info["audit_split"] = result["audit_split"]
            if result["calibration"] is not None:
                calibrations[(framework, output)] = result["calibration"]
                suffix = "" if output == "backbone" else f"-{output}"
                _write_json(os.path.join(out_dir, f"calibration-{framework}{suffix}.json"), result["calibration"])
        _say_summary(stages, tag, info, records, framework)
        frameworks[framework] = info

    quality = {fw: info["feature_quality"] for fw, info in frameworks.items() if "backbone" in info["feature_quality"]}
    results = {
        "schema": RESULTS_SCHEMA, "version": RESULTS_VERSION, "command": "experiment",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config.to_dict(), "environment": _environment(device),
        "dataset": {"name": data.name, "num_samples": len(data), "image_shape": list(data.images.shape[1:]),
                    "num_classes": data.num_classes},
        "splits": {name: int(len(splits[name])) for name in SPLIT_NAMES},
        "frameworks": frameworks, "records": records,
        "correlation": leakage_correlation(quality, records),
        "calibration_files": {f"{fw}/{out}": f"calibration-{fw}{'' if out == 'backbone' else '-' + out}.json"
                              for fw, out in calibrations},
    }
    with stages.timed("report", "writing results.json, report.md and plots"):
        write_outputs(results, out_dir, stages.seconds, stages.start)
    stages.say(f"done in {results['timings']['total']:.0f} s: {os.path.join(out_dir, 'report.md')}")
    return results


def run_attacks(views: Dict[str, ViewSet], study: StudyConfig, out_dir: str, label: str = "embeddings",
                inputs: Optional[dict] = None, progress: bool = True) -> dict:
    """The attack stage alone on given views, into `out_dir` (what `lpla attack` runs).

    views: {output name: ViewSet}. Writes results.json, report.md, plots/ and the fitted LpLA
    calibration of the main table: calibration.json for the first output and
    calibration-<output>.json for the others. Returns the results dict.
    """
    stages = _Stages(progress, "attack")
    os.makedirs(out_dir, exist_ok=True)
    max_k = min(v.max_k for v in views.values())
    if study.k > max_k:
        stages.say(f"the embeddings hold K={max_k} views per sample; the main table uses K={max_k}, not {study.k}")
        study = replace(study, k=max_k)
    records, calibration_files = [], {}
    for i, (output, viewset) in enumerate(views.items()):
        with stages.timed(f"attacks/{output}", f"attacks and sweeps on {label}/{output} "
                          f"({len(viewset.members)} members, {len(viewset.nonmembers)} non-members, K={viewset.max_k})"):
            result = attack_study(viewset, study, label=label, output=output, progress=progress)
        records += result["records"]
        if result["calibration"] is not None:
            name = "calibration.json" if i == 0 else f"calibration-{output}.json"
            _write_json(os.path.join(out_dir, name), result["calibration"])
            calibration_files[f"{label}/{output}"] = name
    results = {
        "schema": RESULTS_SCHEMA, "version": RESULTS_VERSION, "command": "attack",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {"study": study.to_dict()}, "inputs": dict(inputs or {}),
        "environment": _environment("cpu"), "frameworks": {}, "records": records, "correlation": {},
        "calibration_files": calibration_files,
    }
    with stages.timed("report", "writing results.json, report.md and plots"):
        write_outputs(results, out_dir, stages.seconds, stages.start)
    return results


def _say_summary(stages: _Stages, tag: str, info: dict, records: List[dict], framework: str) -> None:
    q = info["feature_quality"].get("backbone") or next(iter(info["feature_quality"].values()))
    parts = [f"linear probe {q['linear_probe']:.3f}"]
    for r in records:
        if r["framework"] == framework and r["study"] == "main" and r["attack"] == "lpla" and r.get("metrics"):
            parts.append(f"LpLA AUC ({r['output']}) {r['metrics']['auc']:.3f}")
    stages.say(f"{tag}: " + ", ".join(parts))


def write_outputs(results: dict, out_dir: str, stage_seconds: Dict[str, float], start: float) -> None:
    """results.json, report.md and plots/*.png; adds the timings to `results`."""
    from . import plots, report

    plot_start = time.perf_counter()
    results["plots"] = plots.make_plots(results, os.path.join(out_dir, "plots"))
    stage_seconds = dict(stage_seconds, plots=round(time.perf_counter() - plot_start, 3))
    results["timings"] = {"stages": stage_seconds, "total": round(time.perf_counter() - start, 3)}
    _write_json(os.path.join(out_dir, "results.json"), results)
    report.write_report(results, os.path.join(out_dir, "report.md"))


def _jsonable(x):
    """Plain JSON values: numpy scalars and arrays to Python, inf to "inf", NaN to null."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if math.isnan(x) else ("inf" if x == math.inf else ("-inf" if x == -math.inf else x))
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _write_json(path: str, doc) -> None:
    write_json(path, _jsonable(doc))


def load_results(path: str) -> dict:
    """Read a results.json (or the run folder holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("schema") != RESULTS_SCHEMA:
        raise ValueError(f"{path!r} is not an lpla_fast results file")
    return doc
