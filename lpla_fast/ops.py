"""Typed wrappers of the compiled ops (`torch.ops.lpla_fast.*`) and their fake kernels.

What each op computes is stated, in float64, by `lpla_fast.reference`; the kernels agree
with it to within each dtype's tolerance.

NaN / Inf policy: a row containing NaN gets a NaN norm; a row with an infinite value (and
no NaN) gets an infinite norm. A view whose statistic is not finite (NaN, Inf, or log 0)
gives a NaN score to its own sample. No row ever affects another row's result.

The CPU kernels are compiled three times, for any x86-64 CPU ("baseline"), for AVX2 + FMA +
F16C ("avx2") and for AVX-512 F/BW/DQ/VL ("avx512"), and the best build the CPU supports runs;
the environment variable LPLA_CPU_CAPABILITY (read at the first op call) names another one.
`cpu_capability()` says which runs.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

_ops = torch.ops.lpla_fast


def check_p(p) -> float:
    """p as a float, or a ValueError unless p is in (0, inf].

    Checked here too (not only in C++) so that the fake kernels (torch.compile, meta) and
    the Python layer raise the same error.
    """
    p = float(p)
    if math.isnan(p) or p <= 0:
        raise ValueError(f"p must be in (0, inf], got p={p}")
    return p


def cpu_capability() -> str:
    """The build of the CPU kernels that runs: "avx512", "avx2" or "baseline"."""
    return _ops.cpu_capability()


def supported_cpu_capabilities() -> List[str]:
    """The builds of the CPU kernels this CPU can run, from "baseline" up."""
    return list(_ops.supported_cpu_capabilities())


def _set_cpu_capability(name: str) -> str:
    """Runs the CPU kernels built for `name` from now on, in the whole process; returns the
    previous one. For tests and benchmarks that compare the builds (a RuntimeError names a
    build this CPU cannot run)."""
    previous = cpu_capability()
    _ops._set_cpu_capability(name)
    return previous


def lp_norm(x: Tensor, p: float = 2.0) -> Tensor:
    """Lp-norm over the last dim.

    Args:
        x: (..., D) float32/float16/bfloat16/float64 tensor, any strides, CPU or CUDA.
        p: in (0, inf]; fast paths for 1, 2, inf and small integers.
    Returns:
        (...) float32 tensor (float64 for float64 input).
    """
    return _ops.lp_norm(x, check_p(p))


def pooled_lp_norm(fmap: Tensor, p: float = 2.0, return_pooled: bool = True) -> Tuple[Optional[Tensor], Tensor]:
    """Global average pooling of a feature map and the Lp-norm of the result, in one pass.

    Args:
        fmap: (N, C, H, W) feature map, contiguous or channels_last.
        p: in (0, inf].
        return_pooled: also return the pooled embedding.
    Returns:
        pooled: (N, C) float32 (float64 for float64 input), or None.
        norms: (N,) Lp-norms of the pooled embeddings.
    """
    pooled, norms = _ops.pooled_lp_norm(fmap, check_p(p), bool(return_pooled))
    return (pooled if return_pooled else None), norms


def lpla_score(
    views: Tensor,
    p: float,
    mean_in: float,
    std_in: float,
    mean_out: float,
    std_out: float,
    log_space: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Fused LpLA scoring: per-view Lp-norms and the per-sample log-likelihood ratio.

    Args:
        views: (N, K, D) embeddings of K query views per sample.
        p: in (0, inf].
        mean_in, std_in, mean_out, std_out: member / non-member Gaussians of the statistic.
        log_space: the statistic is log ||z||_p instead of ||z||_p.
    Returns:
        norms: (N, K) per-view ||z_k||_p (not logged), float32 (float64 for float64 input).
        scores: (N,) sum_k [log N(s_k; mean_in, std_in^2) - log N(s_k; mean_out, std_out^2)].
    """
    return _ops.lpla_score(
        views, check_p(p), float(mean_in), float(std_in), float(mean_out), float(std_out), bool(log_space)
    )


def view_cosine(views: Tensor) -> Tensor:
    """Pairwise cosine similarities of each sample's K views (EncoderMI's features).

    Args:
        views: (N, K, D) embeddings.
    Returns:
        (N, K*(K-1)/2) similarities, upper triangle (i < j) in row-major order,
        float32 (float64 for float64 input). A zero vector has similarity 0 to all.
    """
    return _ops.view_cosine(views)


def pooled_lpla_score(
    fmap: Tensor,
    num_views: int,
    p: float,
    mean_in: float,
    std_in: float,
    mean_out: float,
    std_out: float,
    log_space: bool = False,
    return_pooled: bool = True,
) -> Tuple[Optional[Tensor], Tensor, Tensor]:
    """The fused tail of a pooled encoder: global average pool, per-view Lp-norm and LpLA score.

    Equals `pooled_lp_norm(fmap, p)` followed by `lpla_score` on the pooled views, in one
    pass over the feature map (the scores use the unrounded norms).

    Args:
        fmap: (N*K, C, H, W) last feature maps of K = num_views views per sample, the K views
            of sample n in rows n*K .. n*K+K-1; contiguous or channels_last (others are copied).
        num_views: K >= 1; the first dim must be a multiple of it.
        p: in (0, inf].
        mean_in, std_in, mean_out, std_out: member / non-member Gaussians of the statistic.
        log_space: the statistic is log ||z||_p instead of ||z||_p.
        return_pooled: also return the pooled embeddings.
    Returns:
        pooled: (N*K, C) pooled embeddings, or None.
        norms: (N, K) per-view ||z_k||_p (not logged).
        scores: (N,) as in `lpla_score`.
        All float32 (float64 for float64 input).
    """
    pooled, norms, scores = _ops.pooled_lpla_score(
        fmap, int(num_views), check_p(p), float(mean_in), float(std_in), float(mean_out), float(std_out),
        bool(log_space), bool(return_pooled),
    )
    return (pooled if return_pooled else None), norms, scores


def view_norm_stats(views: Tensor, p: float = 2.0, log_space: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample statistics of the K view norms, and the norm of the view-mean embedding, in one pass.

    The resultant ratio (1 when the views agree, the norm form of view agreement) is
    `mean_view_norm / norms.mean(1)`.

    Args:
        views: (N, K, D) embeddings of K views per sample, any strides.
        p: in (0, inf].
        log_space: mean and std are of log ||z_k||_p instead of ||z_k||_p.
    Returns:
        norms: (N, K) per-view ||z_k||_p (not logged).
        mean: (N,) mean over k of the statistic t_k.
        std: (N,) sample standard deviation (ddof=1) of t_k; 0 when K = 1.
        mean_view_norm: (N,) ||mean_k z_k||_p.
        All float32 (float64 for float64 input). A sample with a non-finite t_k gets NaN mean
        and std; K = 0 gives NaN mean, std and (for D > 0) mean_view_norm.
    """
    return _ops.view_norm_stats(views, check_p(p), bool(log_space))


# --- autograd: pooled_lp_norm is differentiable, so encoders can train through it --------


def _pooled_lp_norm_setup_context(ctx, inputs, output):
    fmap, p, return_pooled = inputs
    pooled, norms = output
    ctx.p = p
    ctx.fmap_shape, ctx.fmap_dtype = fmap.shape, fmap.dtype
    # The norms' gradient needs the pooled vector: the output when returned, else recomputed.
    ctx.save_for_backward(pooled if return_pooled else fmap, norms)
    ctx.return_pooled = return_pooled


def _pooled_lp_norm_backward(ctx, grad_pooled, grad_norms):
    saved, norms = ctx.saved_tensors
    n, c, h, w = ctx.fmap_shape
    grad = torch.zeros((n, c), dtype=norms.dtype, device=norms.device)
    if ctx.return_pooled and grad_pooled is not None:
        grad = grad + grad_pooled
    if grad_norms is not None:
        pooled = saved if ctx.return_pooled else saved.to(norms.dtype).mean(dim=(2, 3))
        grad = grad + grad_norms.unsqueeze(1) * _lp_norm_grad(pooled, norms, ctx.p)
    # Each of the H*W positions contributes 1/(H*W) of its channel's mean.
    grad_fmap = (grad / (h * w)).to(ctx.fmap_dtype)[:, :, None, None].expand(n, c, h, w)
    return grad_fmap, None, None


def _lp_norm_grad(x: Tensor, norms: Tensor, p: float) -> Tensor:
    """d||x||_p / dx for rows x (N, C) with norms (N,); 0 for a zero row (a subgradient)."""
    norms = norms.unsqueeze(1)
    if math.isinf(p):
        # The max |x_i| shares the gradient with its ties, as torch.linalg.vector_norm does.
        # (Compared with the rows' own max: a recomputed x may differ from the kernel's in the last bit.)
        top = x.abs().amax(1, keepdim=True)
        at_max = (x.abs() == top) & (top > 0)
        return x.sign() * at_max / at_max.sum(1, keepdim=True).clamp_min(1)
    # sign(x) (|x| / ||x||)^(p-1); zeros stay 0 (for p < 1 their power would be inf).
    nonzero = x != 0
    ratio = torch.where(nonzero, x.abs() / norms, torch.ones_like(x))
    return torch.where(nonzero, x.sign() * ratio ** (p - 1), torch.zeros_like(x))


torch.library.register_autograd(
    "lpla_fast::pooled_lp_norm", _pooled_lp_norm_backward, setup_context=_pooled_lp_norm_setup_context
)


# --- fake kernels: shapes and dtypes only, for torch.compile and meta tensors ---------

_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _result_dtype(t: Tensor) -> torch.dtype:
    if t.dtype not in _FLOATING:
        raise TypeError(f"expected a float32, float64, float16 or bfloat16 tensor, got {t.dtype}")
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@torch.library.register_fake("lpla_fast::lp_norm")
def _lp_norm_fake(x, p):
    if x.dim() < 1:
        raise RuntimeError("x must have at least 1 dim (..., D), got a 0-D tensor")
    return x.new_empty(x.shape[:-1], dtype=_result_dtype(x))


@torch.library.register_fake("lpla_fast::pooled_lp_norm")
def _pooled_lp_norm_fake(fmap, p, return_pooled):
    if fmap.dim() != 4:
        raise RuntimeError(f"fmap must be 4-D (N, C, H, W), got {fmap.dim()}-D")
    dt = _result_dtype(fmap)
    n, c = fmap.shape[0], fmap.shape[1]
    pooled = fmap.new_empty((n, c) if return_pooled else (0,), dtype=dt)
    return pooled, fmap.new_empty((n,), dtype=dt)


@torch.library.register_fake("lpla_fast::lpla_score")
def _lpla_score_fake(views, p, mean_in, std_in, mean_out, std_out, log_space):
    if views.dim() != 3:
        raise RuntimeError(f"views must be 3-D (N, K, D), got {views.dim()}-D")
    dt = _result_dtype(views)
    n, k = views.shape[0], views.shape[1]
    return views.new_empty((n, k), dtype=dt), views.new_empty((n,), dtype=dt)


@torch.library.register_fake("lpla_fast::view_cosine")
def _view_cosine_fake(views):
    if views.dim() != 3:
        raise RuntimeError(f"views must be 3-D (N, K, D), got {views.dim()}-D")
    k = views.shape[1]
    return views.new_empty((views.shape[0], k * (k - 1) // 2), dtype=_result_dtype(views))


@torch.library.register_fake("lpla_fast::pooled_lpla_score")
def _pooled_lpla_score_fake(fmap, num_views, p, mean_in, std_in, mean_out, std_out, log_space, return_pooled):
    if fmap.dim() != 4:
        raise RuntimeError(f"fmap must be 4-D (N*K, C, H, W), got {fmap.dim()}-D")
    if num_views < 1:
        raise RuntimeError(f"num_views must be >= 1, got num_views={num_views}")
    dt = _result_dtype(fmap)
    rows, c = fmap.shape[0], fmap.shape[1]
    torch._check(rows % num_views == 0, lambda: f"fmap's first dim must be a multiple of num_views={num_views}")
    n = rows // num_views
    pooled = fmap.new_empty((rows, c) if return_pooled else (0,), dtype=dt)
    return pooled, fmap.new_empty((n, num_views), dtype=dt), fmap.new_empty((n,), dtype=dt)


@torch.library.register_fake("lpla_fast::view_norm_stats")
def _view_norm_stats_fake(views, p, log_space):
    if views.dim() != 3:
        raise RuntimeError(f"views must be 3-D (N, K, D), got {views.dim()}-D")
    dt = _result_dtype(views)
    n, k = views.shape[0], views.shape[1]
    per_sample = [views.new_empty((n,), dtype=dt) for _ in range(3)]
    return (views.new_empty((n, k), dtype=dt), *per_sample)
