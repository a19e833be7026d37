"""Input checks shared by the Python layer: bad input gets a message naming the problem."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def as_tensor(x, name: str) -> Tensor:
    """A torch tensor view of a tensor or numpy array (no copy where possible)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def as_views(x, name: str = "views", allow_empty: bool = False, check_finite: bool = True) -> Tensor:
    """Validate (N, K, D) view embeddings (a 2-D (N, D) input is taken as K = 1).

    Raises ValueError / TypeError naming `name` for wrong rank, integer dtype, empty input,
    K = 0, D = 0, or NaN / Inf values.
    """
    t = as_tensor(x, name)
    if t.dim() == 2:
        t = t.unsqueeze(1)
    if t.dim() != 3:
        raise ValueError(f"{name} must be (N, K, D) or (N, D), got shape {tuple(t.shape)}")
    if t.dtype not in _FLOATING:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    n, k, d = t.shape
    if k == 0:
        raise ValueError(f"{name} has K=0 views per sample; the query budget K must be >= 1")
    if d == 0:
        raise ValueError(f"{name} has embedding dimension D=0")
    if n == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (N=0 samples)")
    if check_finite and n > 0:
        bad = ~torch.isfinite(t).reshape(n, -1).all(dim=1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten()[:5].tolist()
            raise ValueError(
                f"{name} contains NaN or Inf in {int(bad.sum())} of {n} samples (first rows: {rows})"
            )
    return t


def check_same_dim(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Embedding dimensions D (last axis) must agree, e.g. shadow vs. target."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"embedding dimension differs: {name_a} has D={a.shape[-1]}, {name_b} has D={b.shape[-1]}"
        )
