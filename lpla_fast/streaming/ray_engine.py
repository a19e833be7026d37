"""The Ray engine: the same job on Ray Data, for more than one machine.

The driver plans the job exactly as the local engine does (same validation, same manifest,
same chunks). Ray Data then streams one row per pending chunk through `map_batches` on an
actor pool: each actor loads its chunk from the job's source (embeddings: memory map or
Parquet row groups; images: decoded, with the same K views), scores it with the job's scorer
(the encoder's forward pass and the fused op, on CPU, or on a GPU with `num_gpus` when
--device is cuda) and writes the chunk's part file atomically. Only small commit records come back to the driver,
which alone writes the manifest. Parts have the local engine's names and contents, so the
two engines' outputs are equal and either can resume the other's job.

On a multi-node cluster the shards and OUT must be on a file system every node can see.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict

import numpy as np

from .config import ScoreConfig
from .job import JobPlan, finish_job, load_job_encoder, part_name, plan_job, write_outputs
from .shards import ShardError


class _ScoreChunks:
    """Ray Data UDF: load, score and write the chunks of a batch; returns commit records."""

    def __init__(self, config: ScoreConfig, calibration_dict, p, id_type, device):
        from ..attacks.calibration import LpLACalibration
        from .scorer import make_scorer
        from .sources import make_source

        calibration = LpLACalibration.from_dict(calibration_dict) if calibration_dict else None
        encoder = load_job_encoder(config, device) if config.images is not None else None
        self.source = make_source(config, encoder)
        self.scorer = make_scorer(config, calibration, p, id_type, encoder)
        self.out, self.device = config.out, device
        self.shards = {}  # opened once per actor

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        errors, skipped = [], []
        for shard_path, start, stop in zip(batch["shard"], batch["start"], batch["stop"]):
            start, stop = int(start), int(stop)
            try:
                shard = self.shards.get(shard_path) or self.shards.setdefault(shard_path, self.source.open(shard_path))
                chunk = self.source.load(shard, start, stop)
                table, embeddings = self.scorer.score_chunk(chunk, self.device)
                if hasattr(shard, "release"):
                    shard.release(start, stop)
                write_outputs(self.out, chunk, table, embeddings)
                errors.append("")
                skipped.append(json.dumps(chunk.skipped) if chunk.skipped else "")
            except ShardError as exc:
                errors.append(exc.problem)
                skipped.append("")
        return {**batch, "error": np.array(errors, dtype=object), "skipped": np.array(skipped, dtype=object)}


def run_ray(config: ScoreConfig) -> Dict[str, object]:
    """Run a scoring job on Ray (config.address, an already initialized Ray, or a new local one)."""
    import ray

    plan = plan_job(config)  # on the driver's CPU: it only checks the encoder
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
    scorer = getattr(plan.scorer, "scorer", plan.scorer)  # the ChunkScorer under an EncoderScorer
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
            config=dataclasses.replace(config, out=os.path.abspath(config.out), progress=False, workers=0),
            calibration_dict=scorer.calibration.to_dict() if scorer.calibration is not None else None,
            p=scorer.p,
            id_type=scorer.id_type,
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
            skipped = json.loads(record["skipped"]) if record["skipped"] else None
            plan.manifest.commit_chunk(shard, start, stop, part_name(shard, start, stop), skipped)
            plan.manifest.save_if_due()
    finally:
        plan.manifest.save_if_unsaved()  # what was committed before an error stays committed
    # Parts of a bad shard finished after it was found bad are unlisted; finish_job drops them.
