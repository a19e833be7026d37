"""The pooled tail of a backbone: global average pooling, and pooling fused with the LpLA score.

A backbone that ends in global average pooling (the small CNN, the ResNets) exposes its last
feature map (`feature_map(x)`, (B, C, H, W)) and its `pool` (a `GlobalAvgPool`); then a
scoring job can hand the feature map to `pooled_lpla_score`, which pools, takes each view's
Lp-norm and scores in one pass, instead of pooling, reshaping and scoring in three.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops


class GlobalAvgPool(nn.Module):
    """(B, C, H, W) -> (B, C), the mean over the spatial positions.

    Without autograd it runs the fused `pooled_lp_norm` op, so that `query_views` and the
    scoring job pool through the same kernel and agree bit for bit. Training (autograd on)
    pools with torch's mean: the op is differentiable too, but torch's mean keeps the
    training step entirely in torch's own kernels, forward and backward.
    """

    def forward(self, fmap: Tensor) -> Tensor:
        if torch.is_grad_enabled() and fmap.requires_grad:
            return fmap.mean(dim=(2, 3))
        pooled, _ = ops.pooled_lp_norm(fmap, 2.0)
        return pooled.to(fmap.dtype)


def split_tail(backbone: nn.Module) -> Optional[Tuple]:
    """(feature_map, pool) of a backbone whose last step is a `GlobalAvgPool`, else None."""
    feature_map = getattr(backbone, "feature_map", None)
    if callable(feature_map) and isinstance(getattr(backbone, "pool", None), GlobalAvgPool):
        return feature_map, backbone.pool
    return None


def pooled_lpla_score(fmap: Tensor, K: int, p: float, mean_in: float, std_in: float, mean_out: float,
                      std_out: float, log_space: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Pool a feature map of N samples x K views, and score each sample with LpLA.

    Args:
        fmap: (N*K, C, H, W) last feature map, the K views of a sample consecutive.
        K: views per sample.
        p, mean_in, std_in, mean_out, std_out, log_space: as for `ops.lpla_score`.
    Returns:
        pooled: (N*K, C) pooled embeddings; norms: (N, K) their Lp-norms; scores: (N,).

    """
    if fmap.dim() != 4 or fmap.shape[0] % K:
        raise ValueError(f"fmap must be (N*K, C, H, W) with K={K} views per sample, got {tuple(fmap.shape)}")
    return ops.pooled_lpla_score(fmap, K, p, mean_in, std_in, mean_out, std_out, log_space, return_pooled=True)
