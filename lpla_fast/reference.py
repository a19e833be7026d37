"""Float64 pure-torch statements of what each compiled op computes.

These are the documentation of the ops and the oracle of their tests: slow, simple and
exact up to float64 rounding. They follow the same NaN / Inf policy as the kernels
(see `lpla_fast.ops`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def lp_norm(x: Tensor, p: float) -> Tensor:
    """(sum_i |x_i|^p)^(1/p) over the last dim (max_i |x_i| for p = inf), in float64.

    Rescaled by max|x| so that huge and tiny values neither overflow nor underflow.
    """
    a = x.detach().to(torch.float64).abs()
    if a.shape[-1] == 0:
        return a.sum(-1)
    m = a.amax(-1, keepdim=True)
    if math.isinf(p):
        out = m.squeeze(-1)
    else:
        scale = torch.where((m > 0) & torch.isfinite(m), m, torch.ones_like(m))
        out = scale.squeeze(-1) * ((a / scale) ** p).sum(-1) ** (1.0 / p)
        out = torch.where(torch.isinf(m.squeeze(-1)), torch.full_like(out, math.inf), out)
    has_nan = torch.isnan(a).any(-1)
    return torch.where(has_nan, torch.full_like(out, math.nan), out)


def pooled_lp_norm(fmap: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Mean over H and W of fmap (N, C, H, W) -> pooled (N, C), and its Lp-norm (N,)."""
    pooled = fmap.detach().to(torch.float64).mean(dim=(2, 3))
    return pooled, lp_norm(pooled, p)


def gaussian_log_ratio(stat: Tensor, mean_in, std_in, mean_out, std_out) -> Tensor:
    """log N(stat; mean_in, std_in^2) - log N(stat; mean_out, std_out^2); NaN where stat is not finite."""
    stat = stat.to(torch.float64)
    zin = (stat - mean_in) / std_in
    zout = (stat - mean_out) / std_out
    llr = -0.5 * zin**2 + 0.5 * zout**2 - (math.log(std_in) - math.log(std_out))
    return torch.where(torch.isfinite(stat), llr, torch.full_like(llr, math.nan))


def lpla_score(views: Tensor, p, mean_in, std_in, mean_out, std_out, log_space=False) -> tuple[Tensor, Tensor]:
    """Per-view norms s (N, K) of views (N, K, D) and the LpLA score (N,).

    score = sum_k [log N(t_k; mean_in, std_in^2) - log N(t_k; mean_out, std_out^2)],
    with t = log s when log_space, else t = s.
    """
    s = lp_norm(views, p)
    stat = torch.log(s) if log_space else s
    return s, gaussian_log_ratio(stat, mean_in, std_in, mean_out, std_out).sum(-1)


def pooled_lpla_score(fmap: Tensor, num_views: int, p, mean_in, std_in, mean_out, std_out, log_space=False):
    """pooled_lp_norm of fmap (N*K, C, H, W), then lpla_score's score of the (N, K) norms.

    Returns pooled (N*K, C), norms (N, K) and scores (N,); rows n*K .. n*K+K-1 are sample n's views.
    """
    pooled, s = pooled_lp_norm(fmap, p)
    s = s.reshape(fmap.shape[0] // num_views, num_views)
    stat = torch.log(s) if log_space else s
    return pooled, s, gaussian_log_ratio(stat, mean_in, std_in, mean_out, std_out).sum(-1)


def view_norm_stats(views: Tensor, p, log_space=False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-view norms s (N, K) of views (N, K, D); mean and sample std (ddof=1) over k of
    t = s (log s when log_space), NaN for a sample with a non-finite t_k, std 0 for K = 1;
    and ||mean_k z_k||_p (N,), the norm of the view-mean embedding."""
    s = lp_norm(views, p)
    t = torch.log(s) if log_space else s
    n, k = t.shape
    mean = t.mean(1)  # NaN for K = 0
    if k > 1 and n > 0:
        std = t.std(1, correction=1)
    else:
        std = torch.full((n,), 0.0 if k == 1 else math.nan, dtype=torch.float64)
    nan = torch.full_like(mean, math.nan)
    finite = torch.isfinite(t).all(1)
    centre = views.detach().to(torch.float64).mean(1)
    return s, torch.where(finite, mean, nan), torch.where(finite, std, nan), lp_norm(centre, p)


COSINE_EPS = 1e-12


def view_cosine(views: Tensor) -> Tensor:
    """(N, K*(K-1)/2) cosine similarities of each sample's views, pairs (i < j) row-major.

    cos(a, b) = a.b / (max(|a|, eps) * max(|b|, eps)), so a zero vector gives 0.
    """
    v = views.detach().to(torch.float64)
    n, k = v.shape[0], v.shape[1]
    unit = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(COSINE_EPS)
    gram = unit @ unit.transpose(1, 2)
    i, j = torch.triu_indices(k, k, offset=1)
    return gram[:, i, j].reshape(n, i.numel())
