"""Batched random views of images, shared by encoder training and view queries.

Each image in a batch gets its own random affine warp (zoom, rotation, shift, flip) through one
`affine_grid` / `grid_sample` call, then its own colour changes and pixel noise; there is no
per-sample Python loop. All randomness comes from the `torch.Generator` passed in, so views are
reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentPolicy:
    """Ranges of the random view transform. Pairs are (low, high) of a uniform draw.

    scale: zoom of the content (< 1 shrinks it, > 1 crops into it).
    rotation: largest absolute rotation, radians.
    shift: largest shift as a fraction of the image side; None shifts only as far as the
        zoomed crop stays inside the image (a random-resized crop).
    flip: probability of a horizontal flip.
    brightness, contrast, saturation: multiplicative factors.
    grayscale: probability of dropping colour.
    noise: standard deviation of additive Gaussian pixel noise.
    padding: grid_sample padding mode for pixels warped in from outside.
    """

    scale: tuple[float, float] = (1.0, 1.0)
    rotation: float = 0.0
    shift: float | None = 0.0
    flip: float = 0.0
    brightness: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    saturation: tuple[float, float] = (1.0, 1.0)
    grayscale: float = 0.0
    noise: float = 0.0
    padding: str = "zeros"


POLICIES = {
    # Small gray glyphs on black: warps, brightness and noise; no flips (they change digits).
    "digits": AugmentPolicy(scale=(0.75, 1.1), rotation=0.3, shift=0.15, brightness=(0.7, 1.3), noise=0.05),
    # Natural photos: SimCLR-style random-resized crop (area 0.2-1), flip and colour jitter.
    "natural": AugmentPolicy(scale=(1.0, 2.2), shift=None, flip=0.5, brightness=(0.6, 1.4),
                             contrast=(0.6, 1.4), saturation=(0.6, 1.4), grayscale=0.2, padding="reflection"),
    "none": AugmentPolicy(),
}
# The policy a dataset trains with when none is named.
DATASET_POLICY = {"digits": "digits", "mnist5k": "digits", "synthetic": "digits"}


def get_policy(policy: str | AugmentPolicy) -> AugmentPolicy:
    if isinstance(policy, AugmentPolicy):
        return policy
    if policy not in POLICIES:
        raise ValueError(f"unknown augmentation policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return POLICIES[policy]


def policy_for_dataset(dataset: str) -> str:
    return DATASET_POLICY.get(dataset, "natural")


def augment(images: Tensor, policy: str | AugmentPolicy, generator: torch.Generator) -> Tensor:
    """One random view of each image.

    Args:
        images: (B, C, H, W) float tensor in [0, 1].
        policy: a name in POLICIES or an AugmentPolicy.
        generator: source of all randomness; its device may differ from the images' (draws are
            made on the generator's device and moved).
    Returns:
        (B, C, H, W) tensor on the images' device and dtype.
    """
    p = get_policy(policy)
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b = images.shape[0]
    u = torch.rand(b, 9, generator=generator, device=generator.device).to(images.device, images.dtype)
    out = _warp(images, p, u[:, :5])
    out = _recolour(out, p, u[:, 5:])
    if p.noise > 0:
        noise = torch.randn(images.shape, generator=generator, device=generator.device)
        out = out + p.noise * noise.to(images.device, images.dtype)
    return out


def _uniform(u: Tensor, bounds: tuple[float, float]) -> Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _warp(images: Tensor, p: AugmentPolicy, u: Tensor) -> Tensor:
    if p.scale == (1.0, 1.0) and p.rotation == 0 and not p.shift and p.flip == 0:
        return images
    zoom = _uniform(u[:, 0], p.scale)
    angle = _uniform(u[:, 1], (-p.rotation, p.rotation))
    if p.shift is None:  # stay inside the image: the crop moves at most by its margin
        reach = (1.0 - 1.0 / zoom).clamp(min=0.0)
    else:
        reach = torch.full_like(zoom, 2.0 * p.shift)  # grid coordinates span 2 per image side
    tx = (2 * u[:, 2] - 1) * reach
    ty = (2 * u[:, 3] - 1) * reach
    mirror = torch.where(u[:, 4] < p.flip, -1.0, 1.0).to(images.dtype)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # theta maps output grid coordinates to input coordinates (hence 1/zoom).
    theta = torch.stack([
        torch.stack([cos * mirror, -sin, tx], dim=1),
        torch.stack([sin * mirror, cos, ty], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=p.padding, align_corners=False)


def _recolour(images: Tensor, p: AugmentPolicy, u: Tensor) -> Tensor:
    shape = (-1, 1, 1, 1)
    out = images
    if p.brightness != (1.0, 1.0):
        out = out * _uniform(u[:, 0], p.brightness).view(shape)
    if p.contrast != (1.0, 1.0):
        mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * _uniform(u[:, 1], p.contrast).view(shape) + mean
    if p.saturation != (1.0, 1.0) and out.shape[1] == 3:
        gray = _gray(out)
        out = (out - gray) * _uniform(u[:, 2], p.saturation).view(shape) + gray
    if p.grayscale > 0 and out.shape[1] == 3:
        out = torch.where((u[:, 3] < p.grayscale).view(shape), _gray(out).expand_as(out), out)
    return out.clamp(0.0, 1.0) if out is not images else out


def _gray(images: Tensor) -> Tensor:
    if images.shape[1] != 3:
        return images.mean(dim=1, keepdim=True)
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def with_changes(policy: str | AugmentPolicy, **changes) -> AugmentPolicy:
    """A copy of a policy with some ranges changed, e.g. with_changes("digits", noise=0.0)."""
    return replace(get_policy(policy), **changes)
