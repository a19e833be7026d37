"""Running the study: `run_experiment` (train, measure, query, attack, report into one run
folder), `run_attacks` (the attack stage alone on given views, for `lpla attack`) and
`attack_study` (every planned attack on one target's views), shared by both."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import metrics
from ..attacks import make_attack
from ..fileio import jsonable, write_json
from ..splits import ROLES, SPLIT_NAMES
from .knowledge import AuditSplit, ViewSet, make_knowledge
from .log import Stages
from .plan import Job, attack_params, plan_jobs, skip_reason
from .results import RESULTS_FILE, AttackRecord, EncoderRecord, Results
from .settings import ExperimentConfig, StudyConfig
from .stats import leakage_correlation

TARGET_SPLITS = ("target_members", "target_nonmembers", "reference")
SHADOW_SPLITS = ("shadow_members", "shadow_nonmembers", "reference")


# --- the attack stage ---------------------------------------------------------------------------

@dataclass
class AttackStageResult:
    """What `attack_study` returns: the records, the main table's fitted LpLA calibration (a dict,
    None without LpLA) and the audit level's split of the target's members and non-members."""

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


def run_job(study: StudyConfig, job: Job, views: ViewSet, evaluated: Tuple[Tensor, Tensor],
            audit: Optional[AuditSplit], **target):
    """Fit one attack at the job's (level, k, p) and score the evaluated members and non-members:
    (record, fitted attack or None). `target`: the record's framework, output, seed, backbone."""
    record = AttackRecord(study=job.study, attack=job.attack, level=job.level, k=int(job.k),
                          skipped=skip_reason(job.attack, job.level, job.k, views),
                          evaluated="audit_halves" if job.study == "knowledge" else "all", **target)
    if record.skipped:
        return record, None
    start = time.perf_counter()
    attack = make_attack(job.attack, **attack_params(study, job.attack, views, job.p))
    record.params = attack.get_params()
    p = record.params.get("p")  # JSON-safe there: inf is "inf"
    record.p = None if p is None else float(p)
    attack.fit(make_knowledge(views.sliced(job.k), job.level, audit))
    members, nonmembers = (e[:, :job.k] for e in evaluated)
    scores = np.concatenate([attack.score(members), attack.score(nonmembers)])
    labels = np.concatenate([np.ones(len(members), bool), np.zeros(len(nonmembers), bool)])
    record.metrics = metrics.evaluate(scores, labels, n_bootstrap=study.n_bootstrap, seed=study.seed)
    if job.study == "main":
        record.roc = dict(zip(("fpr", "tpr"), thin_roc(*metrics.roc_curve(scores, labels))))
    record.seconds = round(time.perf_counter() - start, 4)
    return record, attack


def attack_study(views: ViewSet, study: StudyConfig, label: str = "embeddings", output: str = "backbone",
                 progress: bool = True, seed: int = 0, backbone: Optional[str] = None) -> AttackStageResult:
    """Run every planned attack (plan_jobs) on one target's views.

    The main table and the p and K sweeps evaluate all of the target's members and
    non-members. The knowledge sweep evaluates every level on the same held-out halves
    (AuditSplit), since the audit level calibrates on the other halves; its numbers are
    therefore comparable across levels but not identical to the main table's.
    label, output, seed, backbone: what the records name as the target.
    """
    from tqdm.auto import tqdm

    audit = AuditSplit.draw(len(views.members), len(views.nonmembers), study.seed)
    held_out = (views.members[audit.eval_members], views.nonmembers[audit.eval_nonmembers])
    records, calibration = [], None
    for job in tqdm(plan_jobs(study, views.max_k), desc=f"attacks {label}/{output}", unit="fit",
                    disable=not progress, leave=False):
        evaluated = held_out if job.study == "knowledge" else (views.members, views.nonmembers)
        record, attack = run_job(study, job, views, evaluated, audit, framework=label, output=output, seed=seed,
                                 backbone=backbone)
        records.append(record)
        if job.study == "main" and job.attack == "lpla" and attack is not None:
            calibration = getattr(attack, "calibration_", None)
    return AttackStageResult(records, None if calibration is None else calibration.to_dict(), audit.to_dict())


# --- encoders -------------------------------------------------------------------------------------

def train_or_reuse(images: Tensor, train_config, folder: str, progress: bool) -> Tuple[object, dict]:
    """Train an encoder with its checkpoints in `folder`; a finished one is loaded as is.
    Returns (encoder, training info: seconds, epochs, epochs_reused, reused, final_loss)."""
    from ..encoders import train_encoder
    from ..encoders.checkpoint import read_config

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


# --- the two commands ---------------------------------------------------------------------------------

def run_experiment(config: Optional[ExperimentConfig] = None, out_dir: str = "runs/experiment",
                   progress: bool = True) -> Results:
    """Run the whole study into `out_dir` and return its Results (also in results.json).

    Stages: load the dataset; draw and save the splits; per framework, train (or reuse) the
    target and shadow encoders, measure the target's feature quality (backbone and head), query
    views of every split once at the largest K, and run `attack_study` for each output; then the
    quality-leakage correlation, results.json, report.md and the plots.
    """
    from ..data import load_dataset
    from ..encoders import feature_quality, query_split_views
    from ..encoders.training import resolve_device
    from ..splits import make_splits

    config = config or ExperimentConfig()
    stages = Stages(progress)
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "config.json"), jsonable(config.to_dict()))
    device = str(resolve_device(config.device))

    with stages.timed("load_data", f"loading dataset {config.dataset!r}"):
        data = load_dataset(config.dataset, config.data_root, config.image_size)
    with stages.timed("splits", f"drawing splits (seed {config.seed}) from {len(data)} samples"):
        splits = make_splits(len(data), config.sizes, config.seed).check_disjoint()
        splits.to_json(os.path.join(out_dir, "splits.json"))

    def query(encoder, names):
        return query_split_views(encoder, data.images, splits, names, config.outputs, config.study.max_k,
                                 config.view_policy, config.seed, config.include_clean)

    image_size = int(data.images.shape[-1])
    results = Results(command="experiment", config=config.to_dict(), environment=_environment(device),
                      dataset={"name": data.name, "num_samples": len(data), "image_shape": list(data.images.shape[1:]),
                               "num_classes": data.num_classes},
                      splits={name: int(len(splits[name])) for name in SPLIT_NAMES})
    for i, framework in enumerate(config.frameworks, 1):
        tag = f"[{i}/{len(config.frameworks)}] {framework}"
        encoders, records = {}, {}
        for role in ROLES:
            train_config = config.train_config(framework, role, image_size)
            member_split = f"{role}_members"
            with stages.timed(f"train/{framework}/{role}", f"{tag}: training the {role} encoder "
                              f"({train_config.framework}, {train_config.backbone}, {train_config.epochs} epochs, "
                              f"{len(splits[member_split])} members)"):
                encoders[role], info = train_or_reuse(
                    data.images[torch.as_tensor(splits[member_split])], train_config,
                    os.path.join(out_dir, "encoders", framework, role), progress)
            records[role] = EncoderRecord(framework=framework, role=role, backbone=train_config.backbone,
                                          width=train_config.width, seed=config.seed,
                                          train_config=train_config.to_dict(), **info)
        target = records["target"]
        with stages.timed(f"quality/{framework}", f"{tag}: feature quality (linear probe, kNN)"):
            probe = [data.subset(splits[s]) for s in ("probe_train", "probe_test")]
            target.feature_quality = {
                output: feature_quality(encoders["target"], probe[0].images, probe[0].labels, probe[1].images,
                                        probe[1].labels, output=output) for output in config.outputs}
        with stages.timed(f"views/{framework}", f"{tag}: querying K={config.study.max_k} views of every split"):
            target_views = query(encoders["target"], TARGET_SPLITS)
            shadow_views = query(encoders["shadow"], SHADOW_SPLITS)
            if config.save_embeddings:
                folder = os.path.join(out_dir, "embeddings", framework)
                _save_embeddings(folder, "target", target_views)
                _save_embeddings(folder, "shadow", shadow_views)
        target.embed_dim = {o: int(target_views[o]["target_members"].shape[-1]) for o in config.outputs}
        for output in config.outputs:
            views = ViewSet(members=target_views[output]["target_members"],
                            nonmembers=target_views[output]["target_nonmembers"],
                            target_reference=target_views[output]["reference"],
                            shadow_members=shadow_views[output]["shadow_members"],
                            shadow_nonmembers=shadow_views[output]["shadow_nonmembers"],
                            shadow_reference=shadow_views[output]["reference"])
            with stages.timed(f"attacks/{framework}/{output}", f"{tag}: attacks and sweeps on the {output} output"):
                stage = attack_study(views, config.study, label=framework, output=output, progress=progress,
                                     seed=config.seed, backbone=config.backbone)
            results.records += stage.records
            target.audit_split = stage.audit_split
            if stage.calibration is not None:
                name = f"calibration-{framework}{'' if output == 'backbone' else '-' + output}.json"
                write_json(os.path.join(out_dir, name), jsonable(stage.calibration))
                results.calibration_files[f"{framework}/{output}"] = name
        results.encoders += [records[role] for role in ROLES]
        _say_summary(stages, tag, target, results.select(framework=framework, study="main", attack="lpla"))

    results.correlation = leakage_correlation(results.encoders, results.records)
    with stages.timed("report", "writing results.json, report.md and plots"):
        write_outputs(results, out_dir, stages)
    stages.say(f"done in {results.timings['total']:.0f} s: {os.path.join(out_dir, 'report.md')}")
    return results


def run_attacks(views: Dict[str, ViewSet], study: StudyConfig, out_dir: str, label: str = "embeddings",
                inputs: Optional[dict] = None, progress: bool = True) -> Results:
    """The attack stage alone on given views, into `out_dir` (what `lpla attack` runs).

    views: {output name: ViewSet}. Writes results.json, report.md, plots/ and the fitted LpLA
    calibration of the main table: calibration.json for the first output and
    calibration-<output>.json for the others. Returns the Results.
    """
    stages = Stages(progress, "attack")
    os.makedirs(out_dir, exist_ok=True)
    max_k = min(v.max_k for v in views.values())
    if study.k > max_k:
        stages.say(f"the embeddings hold K={max_k} views per sample; the main table uses K={max_k}, not {study.k}")
        study = replace(study, k=max_k)
    results = Results(command="attack", config={"study": study.to_dict()}, inputs=dict(inputs or {}),
                      environment=_environment("cpu"))
    for i, (output, viewset) in enumerate(views.items()):
        with stages.timed(f"attacks/{output}", f"attacks and sweeps on {label}/{output} "
                          f"({len(viewset.members)} members, {len(viewset.nonmembers)} non-members, K={viewset.max_k})"):
            stage = attack_study(viewset, study, label=label, output=output, progress=progress)
        results.records += stage.records
        if stage.calibration is not None:
            name = "calibration.json" if i == 0 else f"calibration-{output}.json"
            write_json(os.path.join(out_dir, name), jsonable(stage.calibration))
            results.calibration_files[f"{label}/{output}"] = name
    with stages.timed("report", "writing results.json, report.md and plots"):
        write_outputs(results, out_dir, stages)
    return results


def _say_summary(stages: Stages, tag: str, target: EncoderRecord, lpla_records: List[AttackRecord]) -> None:
    q = target.feature_quality.get("backbone") or next(iter(target.feature_quality.values()))
    parts = [f"linear probe {q['linear_probe']:.3f}"]
    parts += [f"LpLA AUC ({r.output}) {r.auc:.3f}" for r in lpla_records if r.metrics]
    stages.say(f"{tag}: " + ", ".join(parts))


def write_outputs(results: Results, out_dir: str, stages: Stages) -> None:
    """plots/*.png, results.json and report.md; adds the plot names and the timings to `results`."""
    from . import plots, report

    plot_start = time.perf_counter()
    results.plots = plots.make_plots(results, os.path.join(out_dir, "plots"))
    stage_seconds = dict(stages.seconds, plots=round(time.perf_counter() - plot_start, 3))
    results.timings = {"stages": stage_seconds, "total": round(stages.elapsed(), 3)}
    results.save(os.path.join(out_dir, RESULTS_FILE))
    report.write_report(results, os.path.join(out_dir, "report.md"))
