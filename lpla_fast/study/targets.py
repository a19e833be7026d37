"""One configuration's targets: their views, feature quality and every table's attacks.

Every pool encoder of a configuration is queried once, at the largest K, on the candidate pool
and on the reference split (the population: known non-members of every encoder); each shadow
(the complementary pair, `groups.SHADOWS`) on the two shadow splits and the reference split.
Target seed s is pool encoder s: its members are the candidates in its half, its reference
encoders the others.
Which tables a target enters depends on its configuration's axis:

- headline: "main" (global attacks, shadow level), "references" (LiRA, RMIA), the p, K and
  knowledge sweeps; also "ladder" when its framework is on the ladder (the ladder's point at
  the study's own architecture), and "defense" (undefended, and under every release-time
  defense) when its framework is the defense framework;
- ladder: "ladder"; defense (training-time): "defense".
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from ..attacks import LabelledEncoder
from ..encoders import feature_quality, query_split_views
from ..fileio import jsonable, write_json
from .attack_stage import ReferenceSet, ShadowFits, attack_target
from .groups import SHADOWS, EncoderGroup, candidates, reference_models
from .knowledge import ViewSet
from .plan import held_out_jobs, plan_jobs, reference_jobs
from .results import EncoderRecord, Results

POOL_SPLITS = ("target_members", "target_nonmembers", "reference")
SHADOW_SPLITS = ("shadow_members", "shadow_nonmembers", "reference")
SHADOW_KEY = 1000  # release-defense noise key of the second shadow (target 0, shadow 1, references 2, ...)


def _query(config, encoder, images, splits, names) -> Dict[str, Dict[str, Tensor]]:
    return query_split_views(encoder, images, splits, names, config.outputs, config.study.max_k,
                             config.view_policy, config.seed, config.include_clean)


def _save_embeddings(folder: str, prefix: str, views: Dict[str, Dict[str, Tensor]]) -> None:
    os.makedirs(folder, exist_ok=True)
    for output, by_split in views.items():
        for split, tensor in by_split.items():
            np.save(os.path.join(folder, f"{prefix}-{split}-{output}.npy"), tensor.numpy())


def _defended(views: ViewSet, refs: Optional[ReferenceSet], defense, seed: int, ids, splits):
    """The views the attacker gets from an API that releases defended embeddings. The defense
    is a property of the API, so the attacker applies it to its own encoders' outputs too
    (with its own seed). Each encoder's scale is measured on its reference-split views (data
    the API owner holds), and each row's noise is keyed by its dataset index."""
    reference_ids = np.asarray(splits["reference"])

    def release(encoder_reference: Tensor, key: int):
        calibrated = defense.calibrated(encoder_reference) if defense.needs_scale else defense
        return lambda t, rows: None if t is None else calibrated.apply(t, seed + key, rows)

    target = release(views.target_reference, 0)
    shadow = release(views.shadow_reference, 1) if views.shadow_reference is not None else None
    more = []
    for i, (extra, (_, member_split, nonmember_split)) in enumerate(zip(views.more_shadows, SHADOWS[1:])):
        f = release(extra.reference, SHADOW_KEY + i)
        more.append(LabelledEncoder(f(extra.members, splits[member_split]),
                                    f(extra.nonmembers, splits[nonmember_split]), f(extra.reference, reference_ids)))
    viewset = ViewSet(members=target(views.members, ids[0]), nonmembers=target(views.nonmembers, ids[1]),
                      target_reference=target(views.target_reference, reference_ids),
                      shadow_members=shadow and shadow(views.shadow_members, splits["shadow_members"]),
                      shadow_nonmembers=shadow and shadow(views.shadow_nonmembers, splits["shadow_nonmembers"]),
                      shadow_reference=shadow and shadow(views.shadow_reference, reference_ids),
                      more_shadows=tuple(more))
    if refs is None:
        return viewset, None
    pool = candidates(splits)
    released = [release(population, 2 + r) for r, population in enumerate(refs.population)]
    return viewset, ReferenceSet(target(refs.candidates, pool), refs.target_mask,
                                 [f(v, pool) for f, v in zip(released, refs.reference_views)], refs.reference_masks,
                                 [f(v, reference_ids) for f, v in zip(released, refs.population)],
                                 target(refs.target_population, reference_ids))


def _tables(config, group: EncoderGroup, max_k: int) -> list:
    study = config.study
    if group.axis == "headline":
        jobs = plan_jobs(study, max_k) + reference_jobs(study, "references", max_k)
        if config.ladder and group.framework in config.ladder_frameworks:
            jobs += held_out_jobs(study, "ladder", max_k) + reference_jobs(study, "ladder", max_k)
        return jobs
    return held_out_jobs(study, group.axis, max_k) + reference_jobs(study, group.axis, max_k)


def _has_defense_table(config, group: EncoderGroup) -> bool:
    return group.axis == "headline" and group.framework == config.defense_framework and \
        bool(config.release_defenses or config.train_defenses)


def attack_group(config, group: EncoderGroup, trained: List[tuple], jobs, data, splits, masks: np.ndarray,
                 results: Results, out_dir: str, progress: bool, stages) -> None:
    """Query, measure and attack every target of `group`; adds its EncoderRecords and
    AttackRecords to `results` (and the headline's LpLA calibrations to out_dir)."""
    from .defenses import ReleaseDefense, defended_quality

    pool = candidates(splits)
    encoders = [encoder for encoder, _ in trained]
    pool_views = [_query(config, e, data.images, splits, POOL_SPLITS) for e in encoders[:group.models]]
    shadow_views = [_query(config, e, data.images, splits, SHADOW_SPLITS) for e in encoders[group.models:]]
    probe = [data.subset(splits[s]) for s in ("probe_train", "probe_test")]
    if config.save_embeddings:
        folder = os.path.join(out_dir, "embeddings", group.key)
        for m, views in enumerate(pool_views):
            _save_embeddings(folder, f"seed{m}", views)
        for (name, _, _), by_output in zip(SHADOWS, shadow_views):
            _save_embeddings(folder, name, by_output)
    for m, ((encoder, info), job) in enumerate(zip(trained, jobs)):
        role = "shadow" if m >= group.models else ("target" if m < group.targets else "reference")
        record = EncoderRecord(framework=group.framework, role=role, backbone=group.backbone, width=group.width,
                               seed=m if role != "shadow" else m - group.models, train_config=job.config.to_dict(),
                               defense=group.defense, members=len(job.images), **info)
        if role == "target":
            record.feature_quality = {o: feature_quality(encoder, probe[0].images, probe[0].labels, probe[1].images,
                                                         probe[1].labels, output=o) for o in config.outputs}
            record.embed_dim = {o: int(pool_views[m][o]["reference"].shape[-1]) for o in config.outputs}
        results.encoders.append(record)
    table_jobs = _tables(config, group, config.study.max_k)
    # Each pool encoder's views of the candidates (in pool order) and of the population, per output.
    candidate_views = {o: [torch.cat([v[o]["target_members"], v[o]["target_nonmembers"]]) for v in pool_views]
                       for o in config.outputs}
    # Each shadow's (members, non-members, reference) per output: the same for every target.
    shadow_sets = {o: [LabelledEncoder(v[o][member_split], v[o][nonmember_split], v[o]["reference"])
                       for (_, member_split, nonmember_split), v in zip(SHADOWS, shadow_views)]
                   for o in config.outputs}
    fits = ShadowFits()  # EncoderMI's shadow fits, the same for every target of the group
    for m in range(group.targets):
        target = results.encoders[-len(trained) + m]
        mask = masks[m]
        for output in config.outputs:
            cand = candidate_views[output]
            population = [v[output]["reference"] for v in pool_views]
            shadows = shadow_sets[output]
            first = shadows[0] if shadows else LabelledEncoder(None, None)
            views = ViewSet(members=cand[m][mask], nonmembers=cand[m][~mask], target_reference=population[m],
                            shadow_members=first.members, shadow_nonmembers=first.nonmembers,
                            shadow_reference=first.reference, more_shadows=tuple(shadows[1:]))
            others = reference_models(m, group.models)
            refs = None if not others else ReferenceSet(cand[m], mask, [cand[r] for r in others], masks[others],
                                                        [population[r] for r in others], population[m])
            ids = (pool[mask], pool[~mask])
            names = dict(framework=group.framework, output=output, seed=m, backbone=group.backbone,
                         width=group.width, defense=group.defense)
            stage = attack_target(views, config.study, table_jobs, ids, refs, progress, fits, **names)
            results.records += stage.records
            target.audit_split = stage.audit_split
            if group.axis == "headline" and m == 0 and stage.calibration is not None:
                name = f"calibration-{group.framework}{'' if output == 'backbone' else '-' + output}.json"
                write_json(os.path.join(out_dir, name), jsonable(stage.calibration))
                results.calibration_files[f"{group.framework}/{output}"] = name
            if not _has_defense_table(config, group):
                continue
            defense_jobs = held_out_jobs(config.study, "defense", views.max_k) + \
                reference_jobs(config.study, "defense", views.max_k)
            results.records += attack_target(views, config.study, defense_jobs, ids, refs, progress,
                                             **names).records
            for spec in config.release_defenses:
                defense = ReleaseDefense.parse(spec)
                dviews, drefs = _defended(views, refs, defense, config.seed, ids, splits)
                results.records += attack_target(dviews, config.study, defense_jobs, ids, drefs, progress,
                                                 **dict(names, defense=spec)).records
                calibrated = defense.calibrated(views.target_reference) if defense.needs_scale else defense
                target.defended_quality.setdefault(spec, {})[output] = defended_quality(
                    trained[m][0], calibrated, probe[0], probe[1], output, config.seed)
        _say_target(stages, group, target, results)


def _say_target(stages, group: EncoderGroup, target: EncoderRecord, results: Results) -> None:
    q = target.feature_quality.get("backbone") or next(iter(target.feature_quality.values()), {})
    parts = [f"linear probe {q.get('linear_probe', float('nan')):.3f}"] if q else []
    for r in results.records:
        if r.framework == group.framework and r.seed == target.seed and r.backbone == group.backbone and \
                r.width == group.width and r.defense == group.defense and r.metrics and r.k == 8 and \
                r.study in ("main", "references") and r.attack in ("lpla", "lira") and \
                r.params.get("statistic", "lpla") == "lpla" and r.params.get("online", True):
            parts.append(f"{r.attack} {r.output} AUC {r.auc:.3f}")
    stages.say(f"{group.key} seed {target.seed}: " + ", ".join(parts))
