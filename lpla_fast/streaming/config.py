"""The settings of one scoring job (`lpla score`'s flags, one to one), checked on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

STATS = ("lpla", "norm")
ENGINES = ("local", "ray")
DEFAULT_BATCH_ROWS = 131072  # embedding rows per chunk
DEFAULT_IMAGE_BATCH_ROWS = 256  # images per chunk (each with K views)
DEFAULT_K = 8
DEFAULT_P = 2.0  # the norm order of --stat norm without a calibration
CHUNK_DELAY_ENV = "LPLA_SCORE_CHUNK_DELAY"  # seconds to sleep per chunk; lets tests kill a run mid-way


@dataclass
class ScoreConfig:
    """Settings of one `lpla score` job.

    The input is either `embeddings` (a glob or folder of embedding shards) or `images` (an
    image source, see `images`) with the `encoder` folder to embed them with: `output`,
    `K`, `view_seed`, `workers`, `write_embeddings`, `forward_batch` and `skip_bad_images` apply to
    images only. `batch_rows` None picks the default of the input kind. `skip_bad_shards` records a
    shard that cannot be read as bad and goes on; `skip_bad_images` leaves just an image that
    cannot be read or decoded out (recorded in the manifest) and scores the rest of its shard.
    """

    out: str
    embeddings: Optional[str] = None
    calibration: Optional[str] = None
    stat: str = "lpla"
    p: Optional[float] = None
    batch_rows: Optional[int] = None
    device: str = "cpu"
    engine: str = "local"
    address: Optional[str] = None
    skip_bad_shards: bool = False
    skip_bad_images: bool = False
    write_norms: bool = False
    overwrite: bool = False
    progress: bool = True
    images: Optional[str] = None
    encoder: Optional[str] = None
    output: str = "backbone"
    K: int = DEFAULT_K
    view_seed: int = 0
    workers: Optional[int] = None  # None: chosen by the job (`tuning.choose_threads`)
    write_embeddings: bool = False
    forward_batch: int = 512  # views per forward pass (rounded to whole blocks of 32 images)

    def __post_init__(self):
        if (self.embeddings is None) == (self.images is None):
            raise ValueError("give exactly one input: --embeddings or --images")
        if self.skip_bad_images and self.images is None:
            raise ValueError("--skip-bad-images is for --images (a bad embedding shard is skipped whole: --skip-bad-shards)")
        if self.images is not None and self.encoder is None:
            raise ValueError("--images needs --encoder (an encoder folder saved by `lpla train`)")
        if self.stat not in STATS:
            raise ValueError(f"--stat must be one of {STATS}, got {self.stat!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {ENGINES}, got {self.engine!r}")
        if self.batch_rows is None:
            self.batch_rows = DEFAULT_IMAGE_BATCH_ROWS if self.images is not None else DEFAULT_BATCH_ROWS
        if self.batch_rows < 1:
            raise ValueError(f"--batch-rows must be >= 1, got {self.batch_rows}")
        if self.images is not None:  # an image job loads an encoder anyway; an embedding job needs none
            from ..encoders.base import OUTPUTS
            from ..encoders.views import RANDOM_BLOCK

            if self.output not in OUTPUTS:
                raise ValueError(f"--output must be one of {OUTPUTS}, got {self.output!r}")
            if self.batch_rows % RANDOM_BLOCK:
                raise ValueError(f"--batch-rows must be a multiple of {RANDOM_BLOCK} with --images "
                                 f"(views are drawn per block of {RANDOM_BLOCK} images), got {self.batch_rows}")
        if int(self.K) != self.K or self.K < 1:
            raise ValueError(f"--K must be an integer >= 1, got {self.K}")
        if self.forward_batch < 1:
            raise ValueError(f"--forward-batch must be >= 1, got {self.forward_batch}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        if self.p is not None and (math.isnan(self.p) or self.p <= 0):
            raise ValueError(f"--p must be in (0, inf], got {self.p}")
        if self.stat == "lpla" and self.calibration is None:
            raise ValueError("--stat lpla needs --calibration (a file saved by `lpla attack`)")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"--device must be cpu or cuda[:i], got {self.device!r}")

    @property
    def input(self) -> str:
        return self.images if self.images is not None else self.embeddings
