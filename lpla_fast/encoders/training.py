"""The training loop: two augmented views per image, the framework's loss, Adam. Seeded,
checkpointed every `checkpoint_every` epochs, and resumed from its checkpoint folder."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import fields

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..augment import augment
from .base import Encoder
from .checkpoint import (MODEL_FILE, load_encoder, load_training_state, read_config, save_encoder,
                         save_training_state)
from .config import TrainConfig
from .frameworks import build_encoder
from .pixels import Images, float_batch, image_count, resolve_images

# Fields that may change between a checkpoint and the run that resumes it.
_RESUMABLE_CHANGES = {"epochs", "device", "checkpoint_every", "amp"}
# Convolutions train faster in channels-last layout on a GPU (tensor cores, with bf16 autocast)
# and, on a CPU, for the small CNNs (oneDNN: 1.13-1.27x at one thread), not for ResNet-18 on
# 16 x 16 images (0.84-0.98x; bench/bench_training.py). The encoder is handed back contiguous, as it
# loads from disk.
CHANNELS_LAST_ON_CPU = ("small_cnn", "deep_cnn")


def train_memory_format(device: torch.device, backbone: str) -> torch.memory_format:
    """The layout an encoder trains in on `device` (see CHANNELS_LAST_ON_CPU)."""
    if device.type == "cuda" or backbone in CHANNELS_LAST_ON_CPU:
        return torch.channels_last
    return torch.contiguous_format


def resolve_device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available")
    return device


def train_encoder(images: Images, config: TrainConfig | None = None, checkpoint_dir: str | None = None,
                  progress: bool = True, rows=None) -> Encoder:
    """Train an encoder of config.framework on `images` and return it in eval mode.

    Args:
        images: the members: a (N, 3, H, W) float tensor in [0, 1]; or a uint8 (N, 3, H, W)
            array (numpy, e.g. an image cache's memory map, or tensor), converted to float
            (x / 255) one batch at a time; or `CacheRows` (rows of an image cache). N >= 2.
        config: a TrainConfig (defaults: the digits SimCLR recipe).
        checkpoint_dir: folder for checkpoints; when it already holds one of the same config,
            training resumes from it (and returns at once if it is finished).
        progress: show a tqdm progress bar.
        rows: with uint8 images, the rows that are the members (default: all). Training on
            uint8 `x[rows]` gives the same encoder as on the float tensor `x[rows] / 255`.
    """
    config = config or TrainConfig()
    images, rows = resolve_images(images, rows)
    floats = isinstance(images, Tensor) and images.is_floating_point()
    if floats:
        _check_images(images, config)
    else:
        _check_pixels(images, rows, config)
    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, caller's RNG untouched
        torch.manual_seed(config.seed)
        encoder = build_encoder(config).to(device)
    memory_format = train_memory_format(device, config.backbone)
    encoder = encoder.to(memory_format=memory_format)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    start_epoch = _resume(encoder, optimizer, generator, checkpoint_dir, config)

    if floats:
        images = images.to(device)  # uint8 images stay where they are: read per batch
    n = image_count(images, rows)
    batches_per_epoch = _batch_count(n, config.batch_size)
    total_steps = max(1, config.epochs * batches_per_epoch)
    step = start_epoch * batches_per_epoch
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if config.amp and device.type == "cuda"
                else contextlib.nullcontext())
    bar = tqdm(range(start_epoch, config.epochs), disable=not progress, initial=start_epoch,
               total=config.epochs, desc=f"{config.framework}/{config.backbone}", unit="epoch")
    for epoch in bar:
        encoder.train()
        epoch_loss = torch.zeros((), device=device)
        for idx in _batches(n, config.batch_size, generator):
            batch = float_batch(images, rows, idx).to(device).contiguous(memory_format=memory_format)
            view0 = augment(batch, config.augmentation, generator)
            view1 = augment(batch, config.augmentation, generator)
            encoder.before_step(step / total_steps)
            with autocast:
                loss = encoder.training_loss(view0, view1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.detach().float()
            step += 1
        encoder.history_.append(float(epoch_loss) / batches_per_epoch)
        bar.set_postfix(loss=f"{encoder.history_[-1]:.4f}")
        done = epoch + 1
        if checkpoint_dir and (done % config.checkpoint_every == 0 or done == config.epochs):
            save_checkpoint(encoder, optimizer, generator, checkpoint_dir)
    if checkpoint_dir and config.epochs == 0:
        save_checkpoint(encoder, optimizer, generator, checkpoint_dir)
    return encoder.to(memory_format=torch.contiguous_format).eval()


def save_checkpoint(encoder: Encoder, optimizer, generator: torch.Generator, path: str) -> None:
    """The encoder files plus optimizer and generator state (weights first, config last, so a
    crash in between leaves the previous config pointing at a complete older state)."""
    os.makedirs(path, exist_ok=True)
    save_training_state(path, {"optimizer": optimizer.state_dict(),
                               "generator": generator.get_state().cpu()})
    save_encoder(encoder, path)


def _resume(encoder, optimizer, generator, path, config: TrainConfig) -> int:
    if not path or not os.path.isfile(os.path.join(path, MODEL_FILE)):
        return 0
    saved = TrainConfig.from_dict(read_config(path)["config"])
    changed = [f.name for f in fields(TrainConfig)
               if f.name not in _RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
        diffs = ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise ValueError(f"checkpoint at {path!r} was trained with a different config ({diffs}); "
                         "use another checkpoint folder")
    device = next(encoder.parameters()).device
    loaded = load_encoder(path, device=device)
    encoder.load_state_dict(loaded.state_dict())
    encoder.history_ = list(loaded.history_)
    state = load_training_state(path)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
    return min(len(encoder.history_), config.epochs)


def _batch_count(n: int, batch_size: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 else 0) if full else 1


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Shuffled index batches; a last batch of one sample is dropped (BatchNorm needs two)."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks.pop()
    return chunks


def _check_pixels(images, rows, config: TrainConfig) -> None:
    """The checks of `_check_images` for uint8 images (always finite: nothing to scan)."""
    n = image_count(images, rows)
    if n < 2:
        raise ValueError(f"training needs at least 2 images, got {n}")
    if images.shape[-1] != config.image_size or images.shape[-2] != config.image_size:
        raise ValueError(f"images are {tuple(images.shape[-2:])} but config.image_size is {config.image_size}")


def _check_images(images: Tensor, config: TrainConfig) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float (N, C, H, W) tensor, got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    if images.shape[0] < 2:
        raise ValueError(f"training needs at least 2 images, got {images.shape[0]}")
    if images.shape[-1] != config.image_size or images.shape[-2] != config.image_size:
        raise ValueError(f"images are {tuple(images.shape[-2:])} but config.image_size is {config.image_size}")
    if math.prod(images.shape) and not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf")
