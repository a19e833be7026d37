"""Which encoders a study trains: its configurations and their pool encoders.

A configuration (`EncoderGroup`) is one point of a study axis: a framework on an architecture,
with or without a training-time defense. It trains `models` pool encoders, each on a random
half of the candidate pool (the target_members and target_nonmembers splits together); the
halves come in complementary pairs (`attacks.draw_reference_masks`), so every candidate is a
member of half the pool encoders, as in LiRA. The first `targets` pool encoders are attacked
as targets, one per seed (seed 0's members are the target_members split); for each target the
others but its complement are its reference encoders (`reference_models`). A headline
configuration also trains a complementary pair of shadow encoders (SHADOWS) on the disjoint
shadow splits, for the global attacks at the shadow knowledge level: one on shadow_members,
the other on shadow_nonmembers, so what the draw of those splits puts in a statistic cancels
between the two, as the pool's complementary halves do for the targets. Every configuration
of a run uses the same pool halves, so target seed s has the same members in every
configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from ..attacks import draw_reference_masks
from ..encoders.backbones import DEFAULT_WIDTH
from ..encoders.parallel import TrainJob
from ..splits import Splits
from .defenses import TrainingDefense
from .settings import SHADOW_SEED_OFFSET, ExperimentConfig, parse_architecture

AXES = ("headline", "ladder", "defense")
# A headline configuration's shadow encoders: (name, member split, non-member split).
SHADOWS = (("shadow", "shadow_members", "shadow_nonmembers"),
           ("shadow-complement", "shadow_nonmembers", "shadow_members"))


@dataclass(frozen=True)
class EncoderGroup:
    """One configuration of the study and the encoders it trains.

    axis: "headline" (the framework table), "ladder" (architecture complexity) or "defense"
        (a training-time defense).
    framework, backbone, width: what is trained (width None: the backbone's default).
    defense: the training-time defense ("weight_decay:0.001"...), None for the plain recipe.
    models: pool encoders; targets: how many of them are attacked (seeds 0..targets-1).
    shadow: whether the shadow encoders (SHADOWS) are trained (headline only).
    """

    axis: str
    framework: str
    backbone: str
    width: Optional[int]
    defense: Optional[str]
    models: int
    targets: int
    shadow: bool

    @property
    def encoders(self) -> int:
        """Encoders the configuration trains: its pool and its shadows."""
        return self.models + (len(SHADOWS) if self.shadow else 0)

    @property
    def key(self) -> str:
        """The configuration's folder name under encoders/, e.g. "simclr-small_cnn-32"."""
        arch = self.backbone if self.width is None else f"{self.backbone}-{self.width}"
        tail = "" if self.defense is None else "-" + self.defense.replace(":", "")
        return f"{self.framework}-{arch}{tail}"

    @property
    def references(self) -> int:
        """Reference encoders of each target (`reference_models`)."""
        return len(reference_models(0, self.models))


def reference_models(target: int, models: int) -> List[int]:
    """The reference encoders of pool encoder `target`: every other pool encoder but its
    complement (target ^ 1, trained on exactly the target's non-members). The remaining pairs
    make every candidate a member of exactly half of the references, whichever its membership
    of the target. Kept, the complement would make the target's members members of fewer
    references than its non-members, and that count alone tells them apart: with three
    references it pushed online LiRA to AUC 0.37 on MoCo."""
    partner = target ^ 1
    if partner >= models:  # an odd pool's last encoder has no complement
        partner = target
    return [r for r in range(models) if r not in (target, partner)]


def plan_groups(config: ExperimentConfig) -> List[EncoderGroup]:
    """The configurations of a study, headline first; one that appears on several axes (the
    study's own architecture on the ladder) is trained once, for the first axis that needs it."""
    base_width = config.width or DEFAULT_WIDTH.get(config.backbone)
    groups = [EncoderGroup("headline", fw, config.backbone, base_width, None, config.pool_models, config.seeds, True)
              for fw in config.frameworks]
    for arch in config.ladder:
        backbone, width = parse_architecture(arch)
        width = width or DEFAULT_WIDTH.get(backbone)
        for fw in config.ladder_frameworks:
            groups.append(EncoderGroup("ladder", fw, backbone, width, None, config.ladder_seeds,
                                       config.ladder_seeds, False))
    for defense in config.train_defenses:
        if TrainingDefense.parse(defense).dp_epsilon is not None:
            check_dp(config.defense_framework, defense)
        groups.append(EncoderGroup("defense", config.defense_framework, config.backbone, base_width, defense,
                                   config.defense_seeds, config.defense_seeds, False))
    seen, unique = set(), []
    for g in groups:
        if (g.framework, g.backbone, g.width, g.defense) not in seen:
            seen.add((g.framework, g.backbone, g.width, g.defense))
            unique.append(g)
    return unique


def pool_masks(config: ExperimentConfig, groups: List[EncoderGroup], splits: Splits) -> np.ndarray:
    """(M, N) in-masks of the pool encoders over the N candidates, shared by every group (a group
    of m encoders uses the first m rows). Row 0 is the target_members split itself, so target
    seed 0 is the target that splits.json describes (and `lpla attack --splits` re-attacks);
    row 1 is its complement; further rows are seeded random halves, in complementary pairs."""
    n_members, n = len(splits["target_members"]), len(candidates(splits))
    m = max([g.models for g in groups] + [2])
    masks = np.zeros((m, n), dtype=bool)
    masks[0, :n_members] = True
    masks[1] = ~masks[0]
    if m > 2:
        masks[2:] = draw_reference_masks(n, m - 2, config.seed)
    return masks


def candidates(splits: Splits) -> np.ndarray:
    """The candidate pool's dataset indices: the target_members split, then target_nonmembers."""
    return np.concatenate([splits["target_members"], splits["target_nonmembers"]])


def _extra_members(defense, splits: Splits, n_members: int) -> np.ndarray:
    """The members that the "members:m" defense adds to each pool encoder's half: drawn from the
    shadow splits, which a defense configuration (it has no shadow encoder) does not use."""
    n_extra = int(round((defense.members_factor - 1.0) * n_members))
    spare = np.concatenate([splits["shadow_members"], splits["shadow_nonmembers"]])
    if n_extra > len(spare):
        raise ValueError(f"defense {defense.spec!r} needs {n_extra} more members per encoder, but the shadow splits "
                         f"that supply them hold {len(spare)}: lower the factor or enlarge the shadow splits")
    return spare[:n_extra]


def check_dp(framework: str, defense: str) -> None:
    """DP-SGD bounds one sample's influence only for a loss made of per-sample terms."""
    from ..encoders.dp import PER_SAMPLE_FRAMEWORKS

    if framework not in PER_SAMPLE_FRAMEWORKS:
        raise ValueError(f"training defense {defense!r} (DP-SGD) needs a framework whose loss is a sum of "
                         f"per-sample terms ({', '.join(PER_SAMPLE_FRAMEWORKS)}); the defense framework is "
                         f"{framework!r}: pass --defense-framework byol (see the README's Defenses)")


def train_jobs(config: ExperimentConfig, group: EncoderGroup, images: torch.Tensor, splits: Splits,
               masks: np.ndarray, out_dir: str) -> List[TrainJob]:
    """The TrainJobs of one group: its pool encoders (seed index m) then its shadows (SHADOWS)."""
    image_size = int(images.shape[-1])
    pool = candidates(splits)
    defense = TrainingDefense.parse(group.defense) if group.defense else None
    extra = _extra_members(defense, splits, int(masks[0].sum())) if defense else np.zeros(0, np.int64)
    folder = os.path.join(out_dir, "encoders", group.key)
    jobs = []
    for m in range(group.models):
        members = np.concatenate([pool[masks[m]], extra])
        train_config = config.train_config(group.framework, image_size, config.seed + m, group.backbone, group.width)
        if defense:
            train_config = defense.train_config(train_config)
        jobs.append(TrainJob(images[torch.as_tensor(members)], train_config, os.path.join(folder, f"seed{m}"),
                             name=f"{group.key}/seed{m}", dp_epsilon=defense.dp_epsilon if defense else None))
    for i, (name, member_split, _) in enumerate(SHADOWS if group.shadow else ()):
        framework = config.shadow_framework or group.framework
        train_config = config.train_config(framework, image_size, config.seed + SHADOW_SEED_OFFSET + i,
                                           group.backbone, group.width)
        jobs.append(TrainJob(images[torch.as_tensor(splits[member_split])], train_config,
                             os.path.join(folder, name), name=f"{group.key}/{name}"))
    return jobs
