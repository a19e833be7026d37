"""Per-sample statistics of a sample's K view embeddings, shared by LpLA and the
reference-calibrated attacks (LiRA, RMIA).

Each statistic maps views (N, K, D) of one encoder to float64 values (N, V):
- "lpla": the LpLA view statistic, log ||z_k||_p (or ||z_k||_p with log=False), one
  column per view (V = K; the columns are views, each a draw of the same quantity);
- "encodermi": EncoderMI's view agreement, the mean pairwise cosine of the views (V = 1);
- "knn": mean cosine similarity of the view-mean embedding to its k nearest neighbours
  in a bank embedded by the same encoder (V = 1);
- "mean_spread": mean and standard deviation (ddof=1) of the K view statistics (V = 2);
- "resultant": ||mean_k z_k||_p / mean_k ||z_k||_p, the resultant length: 1 when the
  views agree, smaller the more they spread (V = 1; EncoderMI's invariance in norm form);
- "multi_p": the mean view statistic at p = 1, 2 and inf (V = 3).
Only "lpla" is per view; the others describe the sample as a whole and are modelled jointly.
LpLA's "joint" characteristic (`characteristic_columns`) stacks every one of them that exists at the
query budget: the norm level, its spread and the resultant length at p, and the level at the
other p of MULTI_P.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import ops
from .knn import build_index, sample_embeddings

MULTI_P = (1.0, 2.0, math.inf)


@dataclass(frozen=True)
class StatisticInfo:
    """What a statistic needs and gives: min_views (K needed), size (V, the values per
    sample; None for K, one per view), per_view (columns are the K views rather than a
    joint vector), needs_bank (a neighbour bank from the same encoder)."""

    min_views: int
    size: Optional[int]
    per_view: bool = False
    needs_bank: bool = False


STATISTICS = {
    "lpla": StatisticInfo(min_views=1, size=None, per_view=True),
    "encodermi": StatisticInfo(min_views=2, size=1),
    "knn": StatisticInfo(min_views=1, size=1, needs_bank=True),
    "mean_spread": StatisticInfo(min_views=2, size=2),
    "resultant": StatisticInfo(min_views=2, size=1),
    "multi_p": StatisticInfo(min_views=1, size=len(MULTI_P)),
}


def check_statistic(name: str) -> StatisticInfo:
    if name not in STATISTICS:
        raise ValueError(f"statistic must be one of {tuple(STATISTICS)}, got {name!r}")
    return STATISTICS[name]


def view_norm_stats(views: Tensor, p: float, log: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The view-norm summary of each sample: the fused `ops.view_norm_stats`, one pass over the views.

    Args:
        views: (N, K, D) embeddings, float32/float16/bfloat16/float64, CPU or CUDA.
        p: the norm's order, in (0, inf].
        log: summarize log ||z_k||_p instead of ||z_k||_p.
    Returns:
        norms (N, K): ||z_k||_p of every view (never logged);
        mean (N,): mean over k of the view statistic (log norms when log);
        std (N,): its standard deviation over k, ddof=1 (0 when K = 1);
        mean_view_norm (N,): ||(1/K) sum_k z_k||_p, the norm of the view-mean embedding
            (never logged).
        All float32 (float64 for float64 input). A zero norm with log=True gives a NaN mean
        and std (callers check the norms first).
    """
    return ops.view_norm_stats(views, p, log)


def _as_numpy(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def _check_log(norms: Tensor, name: str) -> None:
    zero = int((norms <= 0).sum())
    if zero:
        raise ValueError(f"{name} holds {zero} zero-norm views; a log statistic needs norms > 0")


def characteristic_columns(characteristic: str, p: float, k: int) -> Tuple[str, ...]:
    """Names of the columns of `norm_characteristic(views, characteristic, p, ...)` with K = k
    views: "view" k per-view columns; "mean" the mean view statistic and "std" its spread,
    "resultant" the resultant length, "mean@p=q" the mean view statistic at order q. The
    "joint" characteristic: the level ("mean") and, with K >= 2, its spread and the
    resultant length, then the level at each other p of MULTI_P."""
    if characteristic == "view":
        return tuple(f"view{i + 1}" for i in range(k))
    if characteristic == "mean_spread":
        return ("mean", "std")
    if characteristic == "resultant":
        return ("resultant",)
    if characteristic == "multi_p":
        return tuple(f"mean@p={_p_name(q)}" for q in MULTI_P)
    if characteristic == "joint":
        columns = ("mean", "std", "resultant") if k >= 2 else ("mean",)
        return columns + tuple(f"mean@p={_p_name(q)}" for q in MULTI_P if q != p)
    raise ValueError(f"unknown characteristic {characteristic!r}")


def _p_name(q: float) -> str:
    return "inf" if math.isinf(q) else f"{q:g}"


def _joint(views: Tensor, p: float, log: bool, name: str) -> np.ndarray:
    norms, mean, std, mean_view_norm = view_norm_stats(views, p, log)
    if log:
        _check_log(norms, name)
    columns = [_as_numpy(mean)]
    if views.shape[1] >= 2:
        mean_norm = _as_numpy(norms).mean(axis=1)
        if (mean_norm <= 0).any():
            raise ValueError(f"{name} holds samples whose views are all zero; the resultant length is undefined")
        columns += [_as_numpy(std), _as_numpy(mean_view_norm) / mean_norm]
    for q in MULTI_P:
        if q != p:
            norms, mean, _, _ = view_norm_stats(views, q, log)
            if log:
                _check_log(norms, name)
            columns.append(_as_numpy(mean))
    return np.stack(columns, axis=1)


def norm_characteristic(views: Tensor, characteristic: str, p: float, log: bool, name: str = "views") -> np.ndarray:
    """(N, V) float64 values of an LpLA characteristic: "view" (the K view statistics),
    "mean_spread", "resultant", "multi_p" or "joint" (see the module docstring)."""
    if characteristic == "joint":
        return _joint(views, p, log, name)
    if characteristic == "view":  # per-view norms only: one pass, no summary
        norms = ops.lp_norm(views, p)
        if log:
            _check_log(norms, name)
        return np.log(_as_numpy(norms)) if log else _as_numpy(norms)
    if characteristic == "multi_p":
        columns = []
        for q in MULTI_P:
            norms, mean, _, _ = view_norm_stats(views, q, log)
            if log:
                _check_log(norms, name)
            columns.append(_as_numpy(mean))
        return np.stack(columns, axis=1)
    norms, mean, std, mean_view_norm = view_norm_stats(views, p, log and characteristic != "resultant")
    if log and characteristic == "mean_spread":
        _check_log(norms, name)
    if characteristic == "mean_spread":
        return np.stack([_as_numpy(mean), _as_numpy(std)], axis=1)
    if characteristic == "resultant":
        mean_norm = _as_numpy(mean)
        if (mean_norm <= 0).any():
            raise ValueError(f"{name} holds samples whose views are all zero; the resultant length is undefined")
        return (_as_numpy(mean_view_norm) / mean_norm)[:, None]
    raise ValueError(f"unknown characteristic {characteristic!r}")


def bank_similarity(bank: np.ndarray, queries: np.ndarray, k: int, leave_one_out: bool = False) -> np.ndarray:
    """(N,) mean cosine similarity of each query to its k nearest bank rows (exact search).

    bank, queries: L2-normalized float32 rows. leave_one_out: the queries are the bank
    itself (same order), and each row's own entry is not counted as a neighbour.
    """
    extra = 1 if leave_one_out else 0
    if bank.shape[0] < k + extra:
        raise ValueError(f"the neighbour bank has {bank.shape[0]} samples; k={k} neighbours need at least {k + extra}")
    index = build_index(bank, "cosine", "flat", use_gpu=False)
    sims, ids = index.search(queries, k + extra)
    sims = sims.astype(np.float64)
    if leave_one_out:
        own = ids == np.arange(len(queries))[:, None]
        # Drop the own entry; where duplicates hid it, drop the last neighbour instead.
        own[~own.any(axis=1), -1] = True
        sims = sims[~own].reshape(len(queries), k)
    return sims.mean(axis=1)


def sample_statistic(name: str, views: Tensor, p: float = 2.0, log: bool = True, neighbours: int = 10,
                     bank: Optional[np.ndarray] = None, leave_one_out: bool = False,
                     label: str = "views") -> np.ndarray:
    """(N, V) float64 values of statistic `name` (one of STATISTICS) of views (N, K, D).

    bank: for "knn", the encoder's neighbour bank as `bank_embeddings` returns it;
    leave_one_out: the views are the bank's own samples.
    """
    info = check_statistic(name)
    if views.shape[1] < info.min_views:
        raise ValueError(f"statistic {name!r} needs K >= {info.min_views} views per sample; "
                         f"{label} have K={views.shape[1]}")
    if name == "lpla":
        return norm_characteristic(views, "view", p, log, label)
    if name in ("mean_spread", "resultant", "multi_p"):
        return norm_characteristic(views, name, p, log, label)
    if name == "encodermi":
        return _as_numpy(ops.view_cosine(views)).mean(axis=1, keepdims=True)
    if bank is None:
        raise ValueError("statistic 'knn' needs a neighbour bank embedded by the same encoder")
    queries = bank if leave_one_out else bank_embeddings(views)
    return bank_similarity(bank, queries, neighbours, leave_one_out)[:, None]


def bank_embeddings(views: Tensor) -> np.ndarray:
    """(M, D) float32 L2-normalized view-mean embeddings: a kNN bank or its queries."""
    return sample_embeddings(views, "cosine")
