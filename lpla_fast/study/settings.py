"""The study's settings: StudyConfig (the attack stage, shared by `lpla experiment` and
`lpla attack`) and ExperimentConfig (the whole study: data, encoders, outputs, attack stage)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Optional, Tuple

from ..attacks import ATTACKS
from ..attacks.base import LEVELS
from ..encoders.base import OUTPUTS
from ..encoders.config import FRAMEWORKS
from ..fileio import decode_float, encode_float
from ..splits import SplitSizes

# The offset of each role's (splits.ROLES) training seed from the study's seed.
ROLE_SEEDS = {"target": 0, "shadow": 1}


@dataclass
class StudyConfig:
    """What the attack stage runs (shared by `lpla experiment` and `lpla attack`).

    attacks: the main table's attacks, each at knowledge `level` and query budget `k`.
    k: the default query budget (views per sample).
    ks: query budgets of the K sweep; ps: norm orders of the p sweep (attacks whose class has
        `takes_p`).
    levels: knowledge levels of the knowledge sweep.
    sweep_attacks: attacks in the K and knowledge sweeps (those that take p also in the p sweep).
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
        return cls(**known_fields(cls, d))


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
        d = known_fields(cls, d)
        if isinstance(d.get("sizes"), dict):
            d["sizes"] = SplitSizes(**d["sizes"])
        if isinstance(d.get("study"), dict):
            d["study"] = StudyConfig.from_dict(d["study"])
        return cls(**d)

    def train_config(self, framework: str, role: str, image_size: int):
        """The TrainConfig of one encoder (role "target" or "shadow")."""
        from ..augment import policy_for_dataset
        from ..encoders import TrainConfig

        overrides = {name: getattr(self, name) for name in ("width", "epochs", "batch_size", "lr")
                     if getattr(self, name) is not None}
        if role == "shadow" and self.shadow_framework:
            framework = self.shadow_framework
        return TrainConfig(framework=framework, backbone=self.backbone, image_size=int(image_size),
                           seed=self.seed + ROLE_SEEDS[role], device=self.device, amp=self.amp,
                           dataset=self.dataset, augmentation=policy_for_dataset(self.dataset), **overrides)


def known_fields(cls, d: dict) -> dict:
    """d as constructor arguments of dataclass cls; an unknown key is an error naming it."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__} must be read from a JSON object, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return dict(d)
