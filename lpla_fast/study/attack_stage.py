"""The attack stage of one target: fit every planned attack, score the evaluated samples and
keep their per-sample scores.

Global attacks (LpLA, EncoderMI, kNN, the norm threshold) fit on an AttackerKnowledge built
from the target's ViewSet at a knowledge level. Reference-calibrated attacks (LiRA, RMIA) fit
on the target's reference encoders (`ReferenceSet`) and score all candidates. Jobs of the
held-out tables ("knowledge", "ladder", "defense") are evaluated on the audit level's held-out
halves of the target's members and non-members; the others on all of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor

from .. import metrics
from ..attacks import ReferenceKnowledge, attack_class, make_attack
from .knowledge import AuditSplit, ViewSet, make_knowledge
from .plan import Job, attack_params, skip_reason
from .results import AttackRecord, SampleScores
from .settings import StudyConfig


@dataclass
class ReferenceSet:
    """A target's reference encoders, for LiRA and RMIA.

    candidates: the target's (N, K, D) views of every candidate, in pool order.
    target_mask: (N,) bool, the target's membership of each candidate (the truth).
    reference_views: per reference encoder, its (N, K, D) views of the candidates.
    reference_masks: (R, N) bool, the references' memberships (known to the attacker).
    population: per reference encoder, its views of the population (the reference split:
        known non-members of every encoder); target_population: the target's. Both None
        without a population (RMIA and the "knn" statistic are then skipped).
    """

    candidates: Tensor
    target_mask: np.ndarray
    reference_views: Sequence[Tensor]
    reference_masks: np.ndarray
    population: Optional[Sequence[Tensor]]
    target_population: Optional[Tensor]

    def knowledge(self, k: int) -> ReferenceKnowledge:
        has_population = self.population is not None
        return ReferenceKnowledge(reference_views=[v[:, :k] for v in self.reference_views],
                                  in_mask=self.reference_masks,
                                  population_views=[v[:, :k] for v in self.population] if has_population else None,
                                  target_population_views=self.target_population[:, :k] if has_population else None)


class ShadowFits:
    """The shadow-level fits of attacks that read only the labelled sets
    (`Attack.labelled_data_only`: EncoderMI's): the same for every target of a configuration,
    so each is fitted once per shadow views, output, query budget and parameters, and reused."""

    def __init__(self):
        self._fits = {}

    def fitted(self, job: Job, params: dict, views: ViewSet, output, fit):
        key = (job.attack, repr(sorted(params.items())), job.k, output)
        hit = self._fits.get(key)
        if hit is not None and hit[0] is views.shadow_members:  # the very same shadow views
            return hit[1]
        attack = fit()
        self._fits[key] = (views.shadow_members, attack)  # holding the views keeps their identity unique
        return attack


@dataclass
class AttackStageResult:
    """What `attack_target` returns: the records, the main table's fitted LpLA calibration (a
    dict, None without LpLA) and the audit level's split of the target's members and non-members."""

    records: List[AttackRecord]
    calibration: Optional[dict]
    audit_split: dict


def thin_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 600) -> Tuple[list, list]:
    """At most ~max_points ROC points, spread evenly in log FPR (what the log-log plot shows)."""
    if fpr.size > max_points:
        grid = np.concatenate([[0.0], np.logspace(-6, 0, max_points)])
        keep = np.unique(np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, fpr.size - 1))
        fpr, tpr = fpr[keep], tpr[keep]
    return [round(float(x), 6) for x in fpr], [round(float(x), 6) for x in tpr]


def _evaluate(study: StudyConfig, job: Job, record: AttackRecord, member_scores, nonmember_scores,
              member_ids, nonmember_ids) -> None:
    scores = np.concatenate([member_scores, nonmember_scores]).astype(np.float64)
    labels = np.concatenate([np.ones(len(member_scores), bool), np.zeros(len(nonmember_scores), bool)])
    record.metrics = metrics.evaluate(scores, labels, n_bootstrap=study.n_bootstrap, seed=study.seed)
    if job.study in ("main", "references"):
        record.roc = dict(zip(("fpr", "tpr"), thin_roc(*metrics.roc_curve(scores, labels))))
    record.samples = SampleScores(sample=np.concatenate([member_ids, nonmember_ids]).astype(np.int64),
                                  is_member=labels, score=scores)


def run_job(study: StudyConfig, job: Job, views: ViewSet, audit: Optional[AuditSplit],
            ids: Tuple[np.ndarray, np.ndarray], references: Optional[ReferenceSet] = None,
            fits: Optional[ShadowFits] = None, **target) -> Tuple[AttackRecord, object]:
    """Fit one attack and score the evaluated members and non-members: (record, fitted attack
    or None). ids: dataset indices of views.members and views.nonmembers. fits: the
    configuration's ShadowFits (None: fit every time). `target`: the record's framework,
    output, seed, backbone, width, defense."""
    n_refs = 0 if references is None else len(references.reference_views)
    record = AttackRecord(study=job.study, attack=job.attack, level=job.level, k=int(job.k),
                          skipped=skip_reason(job.attack, job.level, job.k, views, job.statistic, n_refs,
                                              job.characteristic),
                          evaluated="audit_halves" if job.held_out else "all", **target)
    if job.statistic is not None:  # named even when skipped: the report's rows need them
        record.params = {"statistic": job.statistic, "online": job.online}
    if job.characteristic is not None:
        record.params = {"characteristic": job.characteristic}
    if record.skipped:
        return record, None
    eval_m = audit.eval_members if job.held_out else np.arange(len(views.members))
    eval_n = audit.eval_nonmembers if job.held_out else np.arange(len(views.nonmembers))
    start = time.perf_counter()
    if job.statistic is not None:
        attack = make_attack(job.attack, statistic=job.statistic, online=job.online,
                             **study.attack_params.get(job.attack, {}))
        try:
            attack.fit(references.knowledge(job.k))
        except ValueError as exc:  # e.g. too few references on one side for this attack
            record.skipped = str(exc)
            return record, None
        scores = attack.score(references.candidates[:, :job.k])
        member_pos, nonmember_pos = np.flatnonzero(references.target_mask), np.flatnonzero(~references.target_mask)
        member_scores, nonmember_scores = scores[member_pos][eval_m], scores[nonmember_pos][eval_n]
    else:
        params = attack_params(study, job.attack, views, job.p, job.characteristic)

        def fit():
            return make_attack(job.attack, **params).fit(make_knowledge(views.sliced(job.k), job.level, audit))

        reusable = fits is not None and job.level == "shadow" and attack_class(job.attack).labelled_data_only
        attack = fits.fitted(job, params, views, target.get("output"), fit) if reusable else fit()
        member_scores = attack.score(views.members[eval_m, :job.k])
        nonmember_scores = attack.score(views.nonmembers[eval_n, :job.k])
    record.params = attack.get_params()
    p = record.params.get("p")  # JSON-safe there: inf is "inf"
    record.p = None if p is None else float(p)
    _evaluate(study, job, record, member_scores, nonmember_scores, ids[0][eval_m], ids[1][eval_n])
    record.seconds = round(time.perf_counter() - start, 4)
    return record, attack


def attack_target(views: ViewSet, study: StudyConfig, jobs: List[Job], ids=None,
                  references: Optional[ReferenceSet] = None, progress: bool = True,
                  fits: Optional[ShadowFits] = None, **target) -> AttackStageResult:
    """Run `jobs` on one target's views (see the module docstring). ids: dataset indices of
    the members and non-members (default: their positions); fits: shared by the targets of a
    configuration (`ShadowFits`)."""
    from tqdm.auto import tqdm

    if ids is None:
        ids = (np.arange(len(views.members)), np.arange(len(views.nonmembers)))
    audit = AuditSplit.draw(len(views.members), len(views.nonmembers), study.seed)
    records, calibration = [], None
    name = "/".join(str(target[k]) for k in ("framework", "output") if target.get(k) is not None)
    for job in tqdm(jobs, desc=f"attacks {name}", unit="fit", disable=not progress, leave=False):
        record, attack = run_job(study, job, views, audit, ids, references, fits, **target)
        records.append(record)
        if job.study == "main" and job.attack == "lpla" and attack is not None:
            calibration = getattr(attack, "calibration_", None)
    return AttackStageResult(records, None if calibration is None else calibration.to_dict(), audit.to_dict())
