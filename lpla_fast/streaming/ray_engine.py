"""The Ray engine: the same job on Ray Data, for more than one machine.

The driver plans the job exactly as the local engine does (same validation, same manifest,
same chunks). Ray Data then streams one row per pending chunk through `map_batches` on an
actor pool: each actor reads its chunk from the shard (memory map or Parquet row groups),
scores it with the fused op (on CPU, or on a GPU with `num_gpus` when --device is cuda) and
writes the chunk's part file atomically. Only small commit records come back to the driver,
which alone writes the manifest. Parts have the local engine's names and contents, so the
two engines' outputs are equal and either can resume the other's job.

On a multi-node cluster the shards and OUT must be on a file system every node can see.
"""

from __future__ import annotations

import os
from typing import Dict

import numpy as np

from .job import ChunkScorer, JobPlan, ScoreConfig, finish_job, part_name, plan_job, write_part
from .shards import ShardError, open_shard


class _ScoreChunks:
    """Ray Data UDF: read, score and write the chunks of a batch; returns commit records."""

    def __init__(self, stat, p, calibration_dict, write_norms, id_type, scores_dir, device):
        from ..calibration import LpLACalibration

        calibration = LpLACalibration.from_dict(calibration_dict) if calibration_dict else None
        self.scorer = ChunkScorer(stat, p, calibration, write_norms, id_type)
        self.scores_dir, self.device = scores_dir, device
        self.shards = {}  # opened once per actor

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        errors = []
        for shard_path, start, stop in zip(batch["shard"], batch["start"], batch["stop"]):
            start, stop = int(start), int(stop)
            try:
                shard = self.shards.get(shard_path) or self.shards.setdefault(shard_path, open_shard(shard_path))
                chunk = shard.read(start, stop)
                table = self.scorer.score_chunk(chunk, self.device)
                shard.release(start, stop)
                write_part(self.scores_dir, part_name(shard_path, start, stop), table)
                errors.append("")
            except ShardError as exc:
                errors.append(exc.problem)
        return {**batch, "error": np.array(errors, dtype=object)}


def run_ray(config: ScoreConfig) -> Dict[str, object]:
    """Run a scoring job on Ray (config.address, an already initialized Ray, or a new local one)."""
    import ray

    plan = plan_job(config)
    started = False
    if not ray.is_initialized():
        ray.init(address=config.address, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        _run(plan, config)
    finally:
        if started:
            ray.shutdown()
    return finish_job(plan)


def _run(plan: JobPlan, config: ScoreConfig) -> None:
    import ray

    tasks = [
        {"shard": shard.path, "start": start, "stop": stop}
        for shard, chunks in plan.pending()
        for start, stop in chunks
    ]
    if not tasks:
        return
    ray.data.DataContext.get_current().enable_progress_bars = config.progress
    calibration = plan.scorer.calibration
    gpu = config.device != "cpu"
    workers = int(ray.cluster_resources().get("GPU" if gpu else "CPU", 0))
    if gpu and workers == 0:
        raise ValueError(f"--device {config.device} with --engine ray: the Ray cluster has no GPU")
    pool = min(max(1, workers), len(tasks))
    ds = ray.data.from_items(tasks, override_num_blocks=min(len(tasks), 4 * pool))
    ds = ds.map_batches(
        _ScoreChunks,
        batch_size=1,
        fn_constructor_kwargs=dict(
            stat=plan.scorer.stat,
            p=plan.scorer.p,
            calibration_dict=calibration.to_dict() if calibration is not None else None,
            write_norms=plan.scorer.write_norms,
            id_type=plan.scorer.id_type,
            scores_dir=os.path.abspath(plan.scores_dir),
            device="cuda" if gpu else "cpu",
        ),
        # Start every actor at once: from one, the pool grows only after a backlog builds,
        # seconds later (each actor imports torch), and short jobs ran on one actor. min_size=1
        # still lets the job run on a cluster whose CPUs are partly taken.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool, initial_size=pool),
        num_cpus=1,
        num_gpus=1 if gpu else None,
    )
    bad = set()
    try:
        for record in ds.iter_rows():
            shard, start, stop = str(record["shard"]), int(record["start"]), int(record["stop"])
            if shard in bad:
                continue
            if record["error"]:
                if not config.skip_bad_shards:
                    raise ShardError(shard, record["error"])
                bad.add(shard)
                plan.record_bad(shard, record["error"])
                continue
            plan.manifest.commit_chunk(shard, start, stop, part_name(shard, start, stop))
            plan.manifest.save_if_due()
    finally:
        plan.manifest.save_if_unsaved()  # what was committed before an error stays committed
    # Parts of a bad shard finished after it was found bad are unlisted; finish_job drops them.
