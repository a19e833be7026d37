"""The study's settings: StudyConfig (the attack stage, shared by `lpla experiment` and
`lpla attack`) and ExperimentConfig (the whole study: data, encoders, outputs, attack stage)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Optional, Tuple

from ..attacks import ATTACKS, CHARACTERISTICS, CHOOSERS, STATISTICS
from ..attacks.base import LEVELS
from ..encoders.base import OUTPUTS
from ..encoders.config import FRAMEWORKS
from ..fileio import decode_float, encode_float
from ..splits import SplitSizes

# Training seeds: pool model m (target or reference encoder) trains with seed + m, a
# configuration's shadows with seed + SHADOW_SEED_OFFSET (+ 1 for the second of the pair).
SHADOW_SEED_OFFSET = 1000
# Reference-calibrated attacks of the study: name -> (attack, online).
REFERENCE_ATTACK_SPECS = {"lira": ("lira", True), "lira-offline": ("lira", False),
                          "rmia": ("rmia", True), "rmia-offline": ("rmia", False)}


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
    reference_attacks: the reference-calibrated attacks (keys of REFERENCE_ATTACK_SPECS), run
        when a target has reference encoders; reference_statistics: the per-sample statistics
        they calibrate; reference_ks: their query budgets.
    characteristics: LpLA's "distribution characteristics" compared in the characteristic
        ablation (at K = 1 and the default K), and the ways of choosing one ("auto", the
        default, is "joint"; "select" cross-validates; "budget" is the earlier fixed choice).
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
    reference_attacks: Tuple[str, ...] = ("lira", "lira-offline", "rmia")
    reference_statistics: Tuple[str, ...] = ("lpla", "encodermi", "knn", "resultant")
    reference_ks: Tuple[int, ...] = (1, 8)
    characteristics: Tuple[str, ...] = CHARACTERISTICS + ("select", "budget")

    def __post_init__(self):
        self.attacks, self.sweep_attacks = tuple(self.attacks), tuple(self.sweep_attacks)
        self.reference_attacks, self.reference_statistics = tuple(self.reference_attacks), tuple(self.reference_statistics)
        self.reference_ks = tuple(int(k) for k in self.reference_ks)
        self.characteristics = tuple(self.characteristics)
        for name in self.characteristics:
            if name not in CHARACTERISTICS + CHOOSERS:
                raise ValueError(f"unknown LpLA characteristic {name!r}; choose from "
                                 f"{', '.join(CHARACTERISTICS + CHOOSERS)}")
        for name in self.reference_attacks:
            if name not in REFERENCE_ATTACK_SPECS:
                raise ValueError(f"unknown reference attack {name!r}; choose from {', '.join(REFERENCE_ATTACK_SPECS)}")
        for name in self.reference_statistics:
            if name not in STATISTICS:
                raise ValueError(f"unknown per-sample statistic {name!r}; choose from {', '.join(STATISTICS)}")
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
        return max((self.k,) + self.ks + self.reference_ks)

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

    The candidate pool is the target_members and target_nonmembers splits together. Each
    configuration (framework x architecture x training defense) trains `models` pool encoders,
    each on a random half of the pool (complementary pairs, as in LiRA) with its own training
    seed: the first `seeds` are evaluated as targets (their own members and non-members), and
    for each target the other pool encoders are its reference encoders.
    seeds: targets per headline configuration (repeats: the across-seed intervals).
    references: reference encoders per headline target, at least (0: no reference-calibrated
        attacks); the pool holds max(seeds, references + 2) encoders, rounded up to an even number.
    ladder: the architecture-complexity axis, "backbone" or "backbone-width" names (e.g.
        "small_cnn-8"), each trained for `ladder_frameworks` with `ladder_seeds` pool encoders
        and attacked at the audit level (no shadow encoder).
    release_defenses / train_defenses: defenses of the privacy-utility table (see
        `study.defenses`), applied to `defense_framework`; a training-time defense trains
        `defense_seeds` pool encoders per defense.
    workers: training processes (None: one per CPU core on a CPU, 1 on a GPU).
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
    seeds: int = 1
    references: int = 0
    ladder: Tuple[str, ...] = ()
    ladder_frameworks: Tuple[str, ...] = ("simclr", "barlowtwins")
    ladder_seeds: int = 1
    release_defenses: Tuple[str, ...] = ()
    train_defenses: Tuple[str, ...] = ()
    defense_framework: str = "simclr"
    defense_seeds: int = 1
    workers: Optional[int] = None

    def __post_init__(self):
        self.frameworks, self.outputs = tuple(self.frameworks), tuple(self.outputs)
        self.ladder, self.ladder_frameworks = tuple(self.ladder), tuple(self.ladder_frameworks)
        self.release_defenses, self.train_defenses = tuple(self.release_defenses), tuple(self.train_defenses)
        for name in ("seeds", "ladder_seeds", "defense_seeds"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if int(self.references) != self.references or self.references < 0 or self.references == 1:
            raise ValueError(f"references must be 0 (none) or an integer >= 2, got {self.references!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        for name in self.ladder_frameworks + (self.defense_framework,):
            if name not in FRAMEWORKS:
                raise ValueError(f"unknown framework {name!r}; choose from {', '.join(FRAMEWORKS)}")
        for arch in self.ladder:
            parse_architecture(arch)
        from .defenses import ReleaseDefense, TrainingDefense

        for spec in self.release_defenses:
            ReleaseDefense.parse(spec)
        for spec in self.train_defenses:
            TrainingDefense.parse(spec)
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

    @property
    def pool_models(self) -> int:
        """Pool encoders per headline configuration: the targets and their references. Target
        s's references are the pool encoders other than s and its complement (see
        `groups.reference_models`), so `references` needs a pool of references + 2, rounded up
        to complementary pairs."""
        if not self.references:
            return self.seeds
        m = max(self.seeds, self.references + 2)
        return m + m % 2

    @classmethod
    def quick(cls, **overrides) -> "ExperimentConfig":
        """A run of about a minute on a CPU, for tests and trying things out: two frameworks,
        tiny encoders trained for two epochs, a few dozen samples per split, K up to 4, and a
        little of every axis (two seeds with two references, a two-point ladder, defenses)."""
        base = dict(
            frameworks=("simclr", "byol"), width=8, epochs=2, batch_size=32,
            sizes=SplitSizes(target_members=40, target_nonmembers=40, shadow_members=40,
                             shadow_nonmembers=40, reference=40, probe_train=60, probe_test=60),
            study=StudyConfig(k=4, ks=(1, 2, 4), n_bootstrap=100, attack_params={"knn": {"k": 5}},
                              reference_ks=(1, 4), reference_statistics=("lpla", "encodermi")),
            seeds=2, references=2, ladder=("small_cnn-4",), ladder_frameworks=("simclr",),
            release_defenses=("normalize", "noise:0.5"), train_defenses=("epochs:0.5",), workers=1,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ExperimentConfig":
        """A named study: "quick", "default", "full" or "paper" (see PRESETS)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        if name == "quick":
            return cls.quick(**overrides)
        return cls(**{**PRESETS[name], **overrides})

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

    def train_config(self, framework: str, image_size: int, seed: int, backbone: Optional[str] = None,
                     width: Optional[int] = None, **changes):
        """The TrainConfig of one encoder: this study's recipe for `framework` on `backbone` at
        `width` (defaults: the study's), trained with `seed`; `changes` override fields."""
        from ..augment import policy_for_dataset
        from ..encoders import TrainConfig

        overrides = {name: getattr(self, name) for name in ("width", "epochs", "batch_size", "lr")
                     if getattr(self, name) is not None}
        if width is not None:
            overrides["width"] = width
        overrides.update(changes)
        return TrainConfig(framework=framework, backbone=backbone or self.backbone, image_size=int(image_size),
                           seed=int(seed), device=self.device, amp=self.amp, dataset=self.dataset,
                           augmentation=policy_for_dataset(self.dataset), **overrides)


def parse_architecture(name: str) -> Tuple[str, Optional[int]]:
    """"small_cnn-16" -> ("small_cnn", 16); "resnet18" -> ("resnet18", None)."""
    from ..encoders.backbones import BACKBONES

    backbone, _, width = str(name).partition("-")
    if backbone not in BACKBONES or (width and not width.isdigit()):
        raise ValueError(f"architecture {name!r} must be a backbone ({', '.join(BACKBONES)}) or "
                         f"backbone-width, e.g. small_cnn-16")
    return backbone, (int(width) if width else None)


# The studies `lpla experiment --preset` names. Times are wall-clock on a 2-core CPU (measured:
# README); "paper" is the GPU run of the paper's setting (CIFAR-10, ResNet-18), not run here.
PRESETS: Dict[str, dict] = {
    "quick": {},
    # 128 members per encoder: as leaky as 200 on digits (head-output view agreement AUC 0.70-0.72
    # either way) and 40 % cheaper to train, which buys the seeds and the reference encoders.
    "default": dict(sizes=SplitSizes(target_members=128, target_nonmembers=128, shadow_members=128,
                                     shadow_nonmembers=128, reference=200, probe_train=600, probe_test=485),
                    seeds=4, references=2, ladder=("small_cnn-8", "small_cnn-16"),
                    release_defenses=("normalize", "noise:0.1", "noise:0.3", "quantize:4", "truncate:32"),
                    train_defenses=("epochs:0.33", "weight_decay:0.001")),
    # The verdicts with more power (`study.power`): SimCLR's head output at the default's recipe and
    # 128 members per target, 20 seeds (each target the others' reference), only what the verdicts
    # need: the strongest attacks of each family at K = 8 and K = 1, no ladder, defenses or sweeps.
    # It detects a paired AUC difference of 0.026 with 80 % power (0.02 needs 34 seeds; README).
    "power": dict(frameworks=("simclr",), outputs=("head",),
                  sizes=SplitSizes(target_members=128, target_nonmembers=128, shadow_members=128,
                                   shadow_nonmembers=128, reference=200, probe_train=600, probe_test=485),
                  seeds=20, references=2,
                  study=StudyConfig(attacks=("lpla", "encodermi-t", "knn"), ks=(1,), ps=(), levels=(),
                                    sweep_attacks=("lpla", "encodermi-t", "knn"), characteristics=(),
                                    reference_attacks=("rmia",),
                                    reference_statistics=("lpla", "encodermi", "knn", "resultant"))),
    "full": dict(seeds=8, references=6, ladder=("small_cnn-8", "small_cnn-16", "small_cnn-64", "deep_cnn-32",
                                                 "resnet18", "vit_small"),
                 ladder_seeds=2, defense_seeds=2,
                 release_defenses=("normalize", "noise:0.1", "noise:0.3", "noise:1", "quantize:2", "quantize:4",
                                   "quantize_vector:2", "truncate:16", "truncate:32"),
                 train_defenses=("epochs:0.17", "epochs:0.33", "epochs:0.67", "weight_decay:0.0001",
                                 "weight_decay:0.001", "members:2")),
    "paper": dict(dataset="cifar10", backbone="resnet18", device="cuda", amp=True, epochs=200, batch_size=256,
                  sizes=SplitSizes(target_members=5000, target_nonmembers=5000, shadow_members=5000,
                                   shadow_nonmembers=5000, reference=5000, probe_train=10000, probe_test=5000),
                  seeds=4, references=6, ladder=("resnet18", "resnet50", "vit_small"),
                  release_defenses=("normalize", "noise:0.1", "quantize:4"),
                  train_defenses=("epochs:0.25", "weight_decay:0.0005")),
}


def known_fields(cls, d: dict) -> dict:
    """d as constructor arguments of dataclass cls; an unknown key is an error naming it."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__} must be read from a JSON object, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return dict(d)
