"""Streaming, resumable scoring of sharded embeddings or images (`lpla score`).

`score_shards(ScoreConfig(...))` runs a job on the local engine or on Ray and returns a
summary. The job (`job`: plan, manifest, output folder) reads chunks from a source
(`sources`: embedding shards, `images`: image sources) and turns them into output tables
with a scorer (`scorer`: the encoder's forward pass and the fused ops).
"""

from .config import ScoreConfig
from .job import read_scores
from .shards import ShardError, discover_shards, open_shard, save_bf16_npy

__all__ = ["ScoreConfig", "ShardError", "discover_shards", "open_shard", "read_scores", "save_bf16_npy", "score_shards"]


def score_shards(config: ScoreConfig) -> dict:
    """Score every row of config's input into config.out, resuming a previous run."""
    if config.engine == "ray":
        from .ray_engine import run_ray

        return run_ray(config)
    from .local import run_local

    return run_local(config)
