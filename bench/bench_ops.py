"""Benchmarks of the compiled ops against the same computation in torch eager, numpy and
(for p=2) FAISS, with the machine's read bandwidth (x.sum()) measured in the same run.

Run: pytest bench/ --benchmark-only  (LPLA_BENCH_ROWS=4096 for a quick check).
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
import torch

import lpla_fast

CALIBRATION = (20.0, 1.0, 21.0, 1.5)  # mean_in, std_in, mean_out, std_out
VIEWS = 8  # views per sample of the pooled_lpla_score feature maps


def nbytes(t):
    return t.numel() * t.element_size()


def p_label(p):
    return "inf" if math.isinf(p) else f"{p:g}"


def test_read_bandwidth(measure, rows):
    measure(rows.sum, "read bandwidth", "x.sum()", nbytes(rows), rows.shape[0])


# --- lp_norm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf, 2.5, 2.7, 3.0])
@pytest.mark.parametrize("impl", ["ours", "torch", "numpy"])
def test_lp_norm_fp32(measure, rows, p, impl):
    if impl == "ours":
        fn = lambda: lpla_fast.lp_norm(rows, p)  # noqa: E731
    elif impl == "torch":
        fn = lambda: torch.linalg.vector_norm(rows, p, dim=-1)  # noqa: E731
    else:
        array = rows.numpy()
        fn = lambda: np.linalg.norm(array, ord=p, axis=-1)  # noqa: E731
    measure(fn, f"lp_norm fp32 p={p_label(p)}", impl, nbytes(rows), rows.shape[0])


def test_lp_norm_fp32_faiss(measure, rows):
    array = rows.numpy()
    out = np.empty(array.shape[0], dtype=np.float32)

    def faiss_norms():
        faiss.fvec_norms_L2sqr(faiss.swig_ptr(out), faiss.swig_ptr(array), array.shape[1], array.shape[0])
        return np.sqrt(out)

    measure(faiss_norms, "lp_norm fp32 p=2", "faiss", nbytes(rows), rows.shape[0])


@pytest.fixture(scope="module", params=[torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def half_rows(request, rows):
    return request.param, rows.to(request.param)


@pytest.mark.parametrize("p", [2.0, 3.0])
@pytest.mark.parametrize("impl", ["ours", "torch"])
def test_lp_norm_half(measure, half_rows, p, impl):
    dtype, x = half_rows
    if impl == "ours":
        fn = lambda: lpla_fast.lp_norm(x, p)  # noqa: E731
    else:
        fn = lambda: torch.linalg.vector_norm(x, p, dim=-1, dtype=torch.float32)  # noqa: E731
    name = "fp16" if dtype == torch.float16 else "bf16"
    measure(fn, f"lp_norm {name} p={p_label(p)}", impl, nbytes(x), x.shape[0])


# --- lpla_score ---------------------------------------------------------------------------------


def torch_lpla_score(views, p, mean_in, std_in, mean_out, std_out):
    s = torch.linalg.vector_norm(views, p, dim=-1)
    zin = (s - mean_in) / std_in
    zout = (s - mean_out) / std_out
    llr = -0.5 * zin**2 + 0.5 * zout**2 - (math.log(std_in) - math.log(std_out))
    return s, llr.sum(-1)


def numpy_lpla_score(views, p, mean_in, std_in, mean_out, std_out):
    s = np.linalg.norm(views, ord=p, axis=-1)
    zin = (s - mean_in) / std_in
    zout = (s - mean_out) / std_out
    llr = -0.5 * zin**2 + 0.5 * zout**2 - (math.log(std_in) - math.log(std_out))
    return s, llr.sum(-1)


@pytest.mark.parametrize("p", [2.0, 3.0])
@pytest.mark.parametrize("impl", ["ours", "torch", "numpy"])
def test_lpla_score(measure, views, p, impl):
    if impl == "ours":
        fn = lambda: lpla_fast.lpla_score(views, p, *CALIBRATION)  # noqa: E731
    elif impl == "torch":
        fn = lambda: torch_lpla_score(views, p, *CALIBRATION)  # noqa: E731
    else:
        array = views.numpy()
        fn = lambda: numpy_lpla_score(array, p, *CALIBRATION)  # noqa: E731
    measure(fn, f"lpla_score p={p_label(p)}", impl, nbytes(views), views.shape[0])


# --- view_norm_stats ----------------------------------------------------------------------------


def torch_view_norm_stats(views, p):
    s = torch.linalg.vector_norm(views, p, dim=-1)
    t = s.log()
    return s, t.mean(1), t.std(1), torch.linalg.vector_norm(views.mean(1), p, dim=-1)


def numpy_view_norm_stats(views, p):
    s = np.linalg.norm(views, ord=p, axis=-1)
    t = np.log(s)
    return s, t.mean(1), t.std(1, ddof=1), np.linalg.norm(views.mean(1), ord=p, axis=-1)


@pytest.mark.parametrize("p", [2.0, 3.0])
@pytest.mark.parametrize("impl", ["ours", "torch", "numpy"])
def test_view_norm_stats(measure, views, p, impl):
    if impl == "ours":
        fn = lambda: lpla_fast.view_norm_stats(views, p, log_space=True)  # noqa: E731
    elif impl == "torch":
        fn = lambda: torch_view_norm_stats(views, p)  # noqa: E731
    else:
        array = views.numpy()
        fn = lambda: numpy_view_norm_stats(array, p)  # noqa: E731
    measure(fn, f"view_norm_stats log p={p_label(p)}", impl, nbytes(views), views.shape[0])


# --- pooled_lp_norm --------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["ours", "torch", "numpy"])
def test_pooled_lp_norm(measure, fmap, impl):
    if impl == "ours":
        fn = lambda: lpla_fast.pooled_lp_norm(fmap, 2.0)  # noqa: E731
    elif impl == "torch":

        def fn():
            pooled = fmap.mean((2, 3))
            return pooled, torch.linalg.vector_norm(pooled, 2.0, dim=1)

    else:
        array = fmap.numpy()

        def fn():
            pooled = array.mean(axis=(2, 3))
            return pooled, np.linalg.norm(pooled, axis=1)

    layout = "channels_last" if fmap.is_contiguous(memory_format=torch.channels_last) else "nchw"
    measure(fn, f"pooled_lp_norm {layout} p=2", impl, nbytes(fmap), fmap.shape[0])


# --- pooled_lpla_score: the fused tail of a pooled encoder ---------------------------------------------


def torch_pooled_lpla_score(fmap, num_views, p, mean_in, std_in, mean_out, std_out):
    pooled = fmap.mean((2, 3))
    s = torch.linalg.vector_norm(pooled, p, dim=1).view(-1, num_views)
    zin = (s - mean_in) / std_in
    zout = (s - mean_out) / std_out
    llr = -0.5 * zin**2 + 0.5 * zout**2 - (math.log(std_in) - math.log(std_out))
    return pooled, s, llr.sum(-1)


@pytest.mark.parametrize("impl", ["ours", "torch"])
def test_pooled_lpla_score(measure, fmap, impl):
    fmap = fmap[: fmap.shape[0] // VIEWS * VIEWS]
    if impl == "ours":
        fn = lambda: lpla_fast.pooled_lpla_score(fmap, VIEWS, 2.0, *CALIBRATION)  # noqa: E731
    else:
        fn = lambda: torch_pooled_lpla_score(fmap, VIEWS, 2.0, *CALIBRATION)  # noqa: E731
    layout = "channels_last" if fmap.is_contiguous(memory_format=torch.channels_last) else "nchw"
    measure(fn, f"pooled_lpla_score {layout} p=2 K={VIEWS}", impl, nbytes(fmap), fmap.shape[0] // VIEWS)


# --- view_cosine --------------------------------------------------------------------------------------


def torch_view_cosine(views):
    unit = torch.nn.functional.normalize(views, dim=-1, eps=1e-12)
    i, j = torch.triu_indices(views.shape[1], views.shape[1], offset=1)
    return (unit @ unit.transpose(1, 2))[:, i, j]


def numpy_view_cosine(views):
    unit = views / np.maximum(np.linalg.norm(views, axis=-1, keepdims=True), 1e-12)
    i, j = np.triu_indices(views.shape[1], k=1)
    return (unit @ unit.transpose(0, 2, 1))[:, i, j]


@pytest.mark.parametrize("impl", ["ours", "torch", "numpy"])
def test_view_cosine(measure, views, impl):
    if impl == "ours":
        fn = lambda: lpla_fast.view_cosine(views)  # noqa: E731
    elif impl == "torch":
        fn = lambda: torch_view_cosine(views)  # noqa: E731
    else:
        array = views.numpy()
        fn = lambda: numpy_view_cosine(array)  # noqa: E731
    measure(fn, "view_cosine K=8", impl, nbytes(views), views.shape[0])
