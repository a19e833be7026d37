"""Running the study: `run_experiment` (train, measure, query, attack, report into one run
folder) and `run_attacks` (the attack stage alone on given views, for `lpla attack`).

run_experiment's stages: load the data and draw the splits; plan the configurations
(`groups.plan_groups`) and train all their encoders in one parallel stage; then per
configuration, query K views of the candidates, the reference split and (headline) the
shadows' splits under every encoder, measure each target's feature quality, and attack every
target: the headline table, the reference-calibrated attacks, the sweeps, the ladder and the
defense tables (`targets.attack_group`); last, the correlations and the outputs.
"""

from __future__ import annotations

import os
import platform
from dataclasses import replace
from typing import Callable, Dict, Optional

import torch

from ..fileio import jsonable, write_json
from ..splits import SPLIT_NAMES, SplitSizes
from .attack_stage import AttackStageResult, attack_target
from .groups import plan_groups, pool_masks, train_jobs
from .knowledge import ViewSet
from .log import Stages
from .plan import plan_jobs
from .results import RESULTS_FILE, Results
from .settings import ExperimentConfig, StudyConfig
from .stats import leakage_correlation


def attack_study(views: ViewSet, study: StudyConfig, label: str = "embeddings", output: str = "backbone",
                 progress: bool = True, seed: int = 0, backbone: Optional[str] = None) -> AttackStageResult:
    """The headline table and the p, K and knowledge sweeps (plan_jobs) on one target's views."""
    return attack_target(views, study, plan_jobs(study, views.max_k), progress=progress, framework=label,
                         output=output, seed=seed, backbone=backbone)


def environment(device: str, workers: Optional[int] = None) -> dict:
    import lpla_fast

    return {"lpla_fast": lpla_fast.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "training_workers": workers,
            "device": device, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "built_with_cuda": lpla_fast.built_with_cuda(),
            # Other work on the machine slows every stage; the timings are read against it.
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def run_experiment(config: Optional[ExperimentConfig] = None, out_dir: str = "runs/experiment",
                   progress: bool = True,
                   fit_sizes: Optional[Callable[[SplitSizes, int], SplitSizes]] = None) -> Results:
    """Run the whole study into `out_dir` and return its Results (also in results.json).

    fit_sizes(sizes, num_samples): the split sizes to draw when config.sizes need more samples
    than the dataset has (None: refuse); it may refuse too (ValueError). What it changes is said
    in a stage line and saved in config.json.
    """
    from ..data import load_dataset
    from ..encoders.parallel import default_workers, train_encoders
    from ..encoders.training import resolve_device
    from ..splits import make_splits
    from .targets import attack_group

    config = config or ExperimentConfig()
    stages = Stages(progress)
    # Everything that can refuse the run (device, data, sizes, plan) is settled before the run
    # folder is written to: a refused command leaves nothing behind.
    device = str(resolve_device(config.device))
    with stages.timed("load_data", f"loading dataset {config.dataset!r}"):
        data = load_dataset(config.dataset, config.data_root, config.image_size)
    if fit_sizes is not None and config.sizes.total > len(data):
        sizes = fit_sizes(config.sizes, len(data))
        stages.say(f"the splits need {config.sizes.total:,} images but {config.dataset} has {len(data):,}: scaled down "
                   f"to {sizes.target_members} members and {sizes.target_nonmembers} non-members per encoder, "
                   f"{sizes.reference} reference and {sizes.probe_train} + {sizes.probe_test} probe images")
        config = replace(config, sizes=sizes)
    with stages.timed("splits", f"drawing splits (seed {config.seed}) from {len(data)} samples"):
        splits = make_splits(len(data), config.sizes, config.seed).check_disjoint()
    groups = plan_groups(config)
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "config.json"), jsonable(config.to_dict()))
    splits.to_json(os.path.join(out_dir, "splits.json"))

    masks = pool_masks(config, groups, splits)
    jobs = {g.key: train_jobs(config, g, data.images, splits, masks, out_dir) for g in groups}
    every_job = [job for group_jobs in jobs.values() for job in group_jobs]
    workers = config.workers or default_workers([j.config for j in every_job])
    results = Results(command="experiment", config=config.to_dict(), environment=environment(device, workers),
                      dataset={"name": data.name, "num_samples": len(data), "image_shape": list(data.images.shape[1:]),
                               "num_classes": data.num_classes},
                      splits={name: int(len(splits[name])) for name in SPLIT_NAMES})
    with stages.timed("train", f"training {len(every_job)} encoders of {len(groups)} configurations "
                      f"({workers} process{'es' if workers > 1 else ''})"):
        trained = iter(train_encoders(every_job, workers, progress, say=stages.say))
        encoders = {g.key: [next(trained) for _ in jobs[g.key]] for g in groups}

    for i, group in enumerate(groups, 1):
        tag = f"[{i}/{len(groups)}] {group.key}"
        with stages.timed(f"attack/{group.key}", f"{tag}: queries, feature quality and attacks "
                          f"({group.targets} target{'s' if group.targets > 1 else ''}, {group.references} "
                          f"reference encoders each)"):
            attack_group(config, group, encoders[group.key], jobs[group.key], data, splits, masks, results,
                         out_dir, progress, stages)
    results.correlation = leakage_correlation(results.encoders, results.records)
    with stages.timed("report", "writing results.json, the reports, plots and exports"):
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
                      environment=environment("cpu"))
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


def write_outputs(results: Results, out_dir: str, stages: Stages, **extras) -> None:
    """plots/, report.md, report.html, scores.parquet, roc/*.npz and results.json (with the
    timings and the plot names); `extras`: write_all's `appendix` and `scores_table_of`."""
    from .report import write_all

    results.timings = {"stages": dict(stages.seconds), "total": round(stages.elapsed(), 3)}
    write_all(results, out_dir, **extras)
    results.save(os.path.join(out_dir, RESULTS_FILE))
