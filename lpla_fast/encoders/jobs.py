"""One encoder trained into its checkpoint folder: what every engine of `parallel.train_encoders`
runs per job (the local worker processes and the Ray tasks alike), so a job interrupted anywhere
resumes from the folder's last checkpoint, and a finished one is only reused.
"""

from __future__ import annotations

import os
import time

from torch import Tensor

from .checkpoint import read_config, save_encoder
from .config import TrainConfig
from .pixels import Images, float_batch, resolve_images
from .training import train_encoder


def epochs_done(folder: str) -> int:
    """Epochs already trained in a checkpoint folder (0 when there is none)."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return 0
    return int(read_config(folder).get("epochs_done", 0))


def train_to_folder(images: Images, config: dict, folder: str, dp_epsilon: float | None = None,
                    progress: bool = False) -> float:
    """Train one encoder into its checkpoint folder (resuming, or reusing it when finished) and
    return the seconds it took: what every engine of `parallel.train_encoders` runs per job.
    config: a TrainConfig as a dict (what crosses to worker processes and Ray tasks)."""
    start = time.perf_counter()
    config = TrainConfig.from_dict(config)
    if dp_epsilon is None:
        train_encoder(images, config, checkpoint_dir=folder, progress=progress)
    elif epochs_done(folder) < config.epochs:  # DP-SGD has no resume: train it whole, or reuse it
        from .dp import train_encoder_dp

        if not isinstance(images, Tensor) or not images.is_floating_point():
            # DP-SGD samples its batches itself: it takes the members as floats
            array, rows = resolve_images(images)
            images = float_batch(array, rows, slice(None))
        encoder = train_encoder_dp(images, config, target_epsilon=dp_epsilon, progress=progress)
        save_encoder(encoder, folder)
    return time.perf_counter() - start
