"""Streaming, resumable scoring of sharded embedding files (`lpla score`).

`score_shards(ScoreConfig(...))` runs a job on the local engine or on Ray and returns a
summary; the outputs and the manifest are described in `lpla_fast.streaming.job`.
"""

from .job import ScoreConfig, read_scores
from .shards import ShardError, discover_shards, open_shard, save_bf16_npy

__all__ = ["ScoreConfig", "ShardError", "discover_shards", "open_shard", "read_scores", "save_bf16_npy", "score_shards"]


def score_shards(config: ScoreConfig) -> dict:
    """Score every row of config.embeddings into config.out, resuming a previous run."""
    if config.engine == "ray":
        from .ray_engine import run_ray

        return run_ray(config)
    from .local import run_local

    return run_local(config)
