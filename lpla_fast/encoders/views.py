"""Query an encoder with K views per image: the attacker's and auditor's black-box access."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
from torch import Tensor

from ..augment import augment
from ..splits import SPLIT_NAMES
from .base import Encoder, check_output, evaluating
from .pixels import Images, float_batch, image_count, resolve_images

# Randomness is drawn per block of this many images from a generator seeded by (seed, block):
# the views of an image depend on the seed and its position, not on batch_size or device.
RANDOM_BLOCK = 32


def query_views(encoder: Encoder, images: Images, K: int, policy: str = "default", seed: int = 0,
                include_clean: bool = True, output: str = "backbone", batch_size: int = 512,
                device=None, rows=None) -> Tensor:
    """Embeddings of K views of every image.

    Args:
        encoder: an Encoder (run in eval mode, without gradients; its mode is restored after).
        images: (N, C, H, W) float tensor in [0, 1]; or a uint8 (N, C, H, W) array or tensor
            (e.g. an image cache's memory map), or `CacheRows`, converted to float (x / 255)
            one batch of images at a time.
        K: views per image (>= 1).
        policy: augmentation policy name; "default" is the one the encoder trained with.
        seed: views are a deterministic function of (seed, image position).
        include_clean: view 1 is the unaugmented image.
        output: "backbone" (the released representation) or "head" (projection-head output).
        batch_size: views per forward pass.
        device: where to run (default: the encoder's device).
        rows: with uint8 images, the rows to query, in this order (default: all); the views
            of x[rows] equal those of the float tensor x[rows] / 255.
    Returns:
        (N, K, D) float32 tensor on the CPU.
    """
    check_output(output)
    if int(K) != K or K < 1:
        raise ValueError(f"K (views per image) must be an integer >= 1, got {K!r}")
    images, rows = resolve_images(images, rows)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    policy = encoder.config.augmentation if policy == "default" else policy
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    n = image_count(images, rows)
    out = torch.empty(n, K, encoder.embed_dim(output), dtype=torch.float32)
    per_forward = max(RANDOM_BLOCK, (batch_size // K) // RANDOM_BLOCK * RANDOM_BLOCK)
    with evaluating(encoder):
        for start in range(0, n, per_forward):
            batch = float_batch(images, rows, slice(start, start + per_forward)).to(device, torch.float32)
            views = draw_views(batch, start, K, policy, seed, include_clean)
            z = encoder.embed(views.flatten(0, 1), output)
            out[start:start + len(batch)] = z.view(len(batch), K, -1).float().cpu()
    return out


def draw_views(batch: Tensor, start: int, K: int, policy, seed: int, include_clean: bool) -> Tensor:
    """(B, K, C, H, W) views of a batch whose first image has global position `start`: the views
    `query_views` embeds, and the image scoring job draws for the same rows (one definition)."""
    n_random = K - 1 if include_clean else K
    if n_random == 0:  # K = 1 with the clean view: the single query is the image itself
        return batch[:, None]
    parts = []
    for offset in range(0, len(batch), RANDOM_BLOCK):
        block = batch[offset:offset + RANDOM_BLOCK]
        gen = torch.Generator().manual_seed(_block_seed(seed, (start + offset) // RANDOM_BLOCK))
        repeated = block.repeat_interleave(n_random, dim=0)
        parts.append(augment(repeated, policy, gen).view(len(block), n_random, *block.shape[1:]))
    random_views = torch.cat(parts) if parts else batch.new_empty(0, n_random, *batch.shape[1:])
    if include_clean:
        return torch.cat([batch[:, None], random_views], dim=1)
    return random_views


def _block_seed(seed: int, block: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, block]).generate_state(1, np.uint64)[0] >> 1)


# Each split's views get their own seed offset; a target and its shadow query a split with the
# same seed, so they see the same views of the reference split.
SPLIT_VIEW_SEEDS = {name: 1000 * (i + 1) for i, name in enumerate(SPLIT_NAMES)}


def head_views(encoder: Encoder, backbone_views: Tensor, batch_size: int = 8192) -> Tensor:
    """Projection-head outputs of backbone view embeddings (N, K, D) -> (N, K, D_head).

    Encoder.embed(x, "head") is head(backbone(x)), so this equals querying the head output
    with the same views, without a second pass through the backbone.
    """
    n, k, d = backbone_views.shape
    device = next(encoder.parameters()).device
    flat = backbone_views.reshape(n * k, d)
    with evaluating(encoder):
        parts = [encoder.head(flat[i:i + batch_size].to(device)).float().cpu()
                 for i in range(0, n * k, batch_size)]
    return torch.cat(parts).reshape(n, k, -1)


def query_split_views(encoder: Encoder, images: Tensor, splits, names: Tuple[str, ...], outputs: Tuple[str, ...],
                      k: int, policy: str = "default", seed: int = 0,
                      include_clean: bool = True) -> Dict[str, Dict[str, Tensor]]:
    """{output: {split: (N, k, D)}} view embeddings of the named splits (of a `Splits`) under one
    encoder; split `name` is queried with seed + SPLIT_VIEW_SEEDS[name]."""
    out: Dict[str, Dict[str, Tensor]] = {o: {} for o in outputs}
    for name in names:
        backbone = query_views(encoder, images[torch.as_tensor(splits[name])], K=k, policy=policy,
                               seed=seed + SPLIT_VIEW_SEEDS[name], include_clean=include_clean, output="backbone")
        if "backbone" in out:
            out["backbone"][name] = backbone
        if "head" in out:
            out["head"][name] = head_views(encoder, backbone)
    return out
