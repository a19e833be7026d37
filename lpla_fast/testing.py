"""Input builders shared by the tests and the benchmarks of the compiled ops, and
`files_under`, which tests use to show that a refused command changed nothing on disk.

Every builder takes a seed and returns a tensor in the requested layout, so a test and a
benchmark of the same case look at the same kind of data.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_rows(n: int, d: int, dtype=torch.float32, device="cpu", layout: str = "contiguous", seed: int = 0) -> Tensor:
    """(n, d) standard-normal rows in one of LAYOUTS.

    contiguous: row-major; transposed: a (d, n) tensor's transpose (stride 1 across rows);
    sliced: every other column of an (n, 2d) tensor; expanded: one row broadcast n times
    (stride 0 across rows).
    """
    g = _generator(seed)
    # The view is taken after the dtype conversion, which would otherwise copy it densely.
    if layout == "contiguous":
        return _to(torch.randn(n, d, generator=g), dtype, device)
    if layout == "transposed":
        return _to(torch.randn(d, n, generator=g), dtype, device).t()
    if layout == "sliced":
        return _to(torch.randn(n, 2 * d, generator=g), dtype, device)[:, ::2]
    if layout == "expanded":
        return _to(torch.randn(1, d, generator=g), dtype, device).expand(n, d)
    raise ValueError(f"layout must be one of {LAYOUTS}, got layout={layout!r}")


def random_views(n: int, k: int, d: int, dtype=torch.float32, device="cpu", scale: float = 1.0, seed: int = 0) -> Tensor:
    """(n, k, d) embeddings of k views per sample: a per-sample centre plus view noise."""
    g = _generator(seed)
    centre = torch.randn(n, 1, d, generator=g)
    views = scale * (centre + 0.3 * torch.randn(n, k, d, generator=g))
    return _to(views, dtype, device)


def membership_views(member, k: int, d: int = 16, level_shift: float = 0.0, level_spread: float = 0.0,
                     view_sigma: float = 0.5, angle_in: float = 0.0, angle_out: float = 0.0, scale: float = 1.0,
                     seed: int = 0) -> Tensor:
    """(n, k, d) float64 view embeddings whose membership signal is known, for the attacks' tests.

    Norms: log ||z_ik||_2 = b_i + level_shift * member_i + view_sigma * e_ik + log(scale), with
    a per-sample level b_i ~ N(0, level_spread^2) and e_ik ~ N(0, 1). Directions: view k of
    sample i points along c_i + a_i * n_ik (c_i, n_ik standard normal in R^d, normalized), with
    angular noise a_i = angle_in for members and angle_out for non-members; 0 for both draws
    every view's direction at random (independent views, no agreement signal). So
    level_shift moves only the norm level (the Bayes-optimal score is then the mean view
    log-norm, AUC Phi(level_shift / sqrt(2 (level_spread^2 + view_sigma^2 / k)))), and
    angle_in != angle_out moves only the views' agreement.
    """
    g = _generator(seed)
    member = torch.as_tensor(member, dtype=torch.bool)
    n = member.numel()
    m = member.to(torch.float64)[:, None]
    log_norm = (level_spread * torch.randn(n, 1, generator=g, dtype=torch.float64) + level_shift * m
                + view_sigma * torch.randn(n, k, generator=g, dtype=torch.float64) + math.log(scale))
    noise = torch.randn(n, k, d, generator=g, dtype=torch.float64)
    if angle_in or angle_out:
        angle = torch.where(member, torch.tensor(float(angle_in)), torch.tensor(float(angle_out))).double()
        noise = torch.randn(n, 1, d, generator=g, dtype=torch.float64) + angle[:, None, None] * noise
    return noise / noise.norm(dim=-1, keepdim=True) * torch.exp(log_norm)[..., None]


def random_fmap(n: int, c: int, h: int, w: int, dtype=torch.float32, device="cpu", channels_last: bool = False, seed: int = 0) -> Tensor:
    """(n, c, h, w) non-negative feature map (as after a ReLU), NCHW or channels_last."""
    g = _generator(seed)
    fmap = torch.randn(n, c, h, w, generator=g).clamp_min(0)
    fmap = _to(fmap, dtype, device)
    return fmap.contiguous(memory_format=torch.channels_last) if channels_last else fmap


def _to(x: Tensor, dtype, device) -> Tensor:
    return x.to(device=device, dtype=dtype)


def bench_rows(default: int = 262_144) -> int:
    """Rows of the benchmark inputs: LPLA_BENCH_ROWS, else `default` (0.5 GB of fp32 at D=512)."""
    value = os.environ.get("LPLA_BENCH_ROWS", str(default))
    rows = int(value)
    if rows <= 0:
        raise ValueError(f"LPLA_BENCH_ROWS must be a positive integer, got LPLA_BENCH_ROWS={value!r}")
    return rows


def random_images(n: int, seed: int = 0, size: int = 16):
    """n random uint8 RGB images (n, size, size, 3), as image files hold them (tests of the image sources)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def png_bytes(image) -> bytes:
    """One (H, W, 3) uint8 image encoded as a PNG file's bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_folder(root, images) -> None:
    """An ImageFolder of PNGs under `root` (pathlib.Path): two classes, image i in class{i % 2}/img{i:04d}.png."""
    for i, image in enumerate(images):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:04d}.png").write_bytes(png_bytes(image))


def files_under(folder) -> dict:
    """Every file under `folder`: {relative path: (its bytes, its modification time in ns)}."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return files
