"""The compiled ops against their float64 reference (lpla_fast.reference), on CPU and CUDA."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lpla_fast
from lpla_fast import reference
from lpla_fast.testing import FLOAT_DTYPES, LAYOUTS, random_fmap, random_rows, random_views

# Every test of the compiled ops runs each build of the CPU kernels this CPU supports.
pytestmark = pytest.mark.usefixtures("cpu_capability")

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]
P_VALUES = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, math.inf]
INF = math.inf


def tolerance(dtype):
    """(rtol, atol) against the float64 reference computed on the same (rounded) input.

    The reference sees the very values the kernel reads, so half types need no looser
    bound than float32: only the kernel's own rounding (float results, float terms) counts.
    """
    if dtype == torch.float64:
        return 1e-10, 1e-300
    return 1e-4, 1e-30


def assert_close(actual, expected, dtype):
    rtol, atol = tolerance(dtype)
    torch.testing.assert_close(actual.cpu().double(), expected.cpu().double(), rtol=rtol, atol=atol, equal_nan=True)


# --- lp_norm ---------------------------------------------------------------------------------

LP_SHAPES = [(7, 33), (5, 1), (0, 16), (3, 4, 17), (2, 20000), (33,)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("shape", LP_SHAPES, ids=str)
def test_lp_norm_matches_reference(device, dtype, p, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    out = lpla_fast.lp_norm(x, p)
    assert out.shape == x.shape[:-1]
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.device == x.device
    assert_close(out, reference.lp_norm(x.cpu(), p), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("p", [1.0, 2.5, INF])
def test_lp_norm_any_strides(device, dtype, layout, p):
    x = random_rows(9, 70, dtype, device, layout=layout, seed=2)
    assert_close(lpla_fast.lp_norm(x, p), reference.lp_norm(x.cpu(), p), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_lp_norm_permuted_3d(device):
    x = torch.randn(6, 5, 4, generator=torch.Generator().manual_seed(3)).to(device).permute(2, 0, 1)
    assert_close(lpla_fast.lp_norm(x, 3.0), reference.lp_norm(x.cpu(), 3.0), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("magnitude", [1e30, 1e-30, 1e200, 1e-200])
@pytest.mark.parametrize("p", [0.5, 1.0, 2.0, 3.0, 4.0, 7.5, 40.0, INF])
def test_lp_norm_huge_and_tiny_values(device, dtype, magnitude, p):
    if dtype == torch.float32 and not 1e-38 < magnitude < 1e38:
        pytest.skip("not representable in float32")
    x = (torch.randn(4, 300, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * magnitude)
    x = x.to(device=device, dtype=dtype)
    expected = reference.lp_norm(x.cpu(), p)
    assert torch.isfinite(expected).all()
    assert_close(lpla_fast.lp_norm(x, p), expected, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("p", [1100.0, 2000.0])
def test_lp_norm_very_large_p(device, dtype, p):
    # A row max that is a power of two is where a rescale by 2^-exponent (instead of by the
    # max itself) would shrink every term below the smallest float.
    x = torch.ones(3, 5, dtype=dtype, device=device)
    x[1] = torch.tensor([0.5, -0.25, 0.5, 0.125, 0.0])
    x[2] = torch.randn(5, generator=torch.Generator().manual_seed(5)).to(dtype)
    assert_close(lpla_fast.lp_norm(x, p), reference.lp_norm(x.cpu(), p), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("p", [1.0, 2.0, 2.5, 3.0, INF])
def test_lp_norm_nan_and_inf_stay_in_their_row(device, dtype, p):
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(5)).to(dtype)
    x[1, 7] = math.nan
    x[3, 39] = math.inf
    x[4, 0] = -math.inf
    x[4, 5] = math.nan
    x[5] = 0
    out = lpla_fast.lp_norm(x.to(device), p).cpu()
    assert math.isnan(out[1]) and math.isnan(out[4])
    assert out[3] == math.inf
    assert out[5] == 0
    keep = [0, 2]
    assert_close(out[keep], reference.lp_norm(x[keep], p), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_lp_norm_empty_rows_are_zero(device, p):
    out = lpla_fast.lp_norm(torch.empty(3, 0, device=device), p)
    assert out.shape == (3,) and (out == 0).all()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 6),
    d=st.integers(1, 80),
    p=st.one_of(st.sampled_from(P_VALUES), st.floats(0.3, 12.0)),
    dtype=st.sampled_from(FLOAT_DTYPES),
    scale=st.sampled_from([1.0, 1e-6, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_lp_norm_hypothesis(n, d, p, dtype, scale, seed):
    x = (torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)
    assert_close(lpla_fast.lp_norm(x, p), reference.lp_norm(x, p), dtype)



# --- the builds of the CPU kernels ---------------------------------------------------------------


def test_cpu_capability_names_the_build_that_runs(cpu_capability):
    assert lpla_fast.cpu_capability() == cpu_capability
    assert lpla_fast.ops.supported_cpu_capabilities()[0] == "baseline"


def test_cpu_capability_default_and_override(cpu_capability):
    """A new process runs the best build by default, and the one LPLA_CPU_CAPABILITY names."""
    env = {k: v for k, v in os.environ.items() if k != "LPLA_CPU_CAPABILITY"}
    if cpu_capability != lpla_fast.ops.supported_cpu_capabilities()[-1]:
        env["LPLA_CPU_CAPABILITY"] = cpu_capability
    code = "import torch, lpla_fast; lpla_fast.lp_norm(torch.ones(2, 3)); print(lpla_fast.cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == cpu_capability


def test_unknown_cpu_capability_is_refused(cpu_capability):
    with pytest.raises(RuntimeError, match="'sse' is not a CPU capability"):
        lpla_fast.ops._set_cpu_capability("sse")
    assert lpla_fast.cpu_capability() == cpu_capability

# --- pooled_lp_norm ------------------------------------------------------------------------------

FMAP_SHAPES = [(3, 5, 4, 6), (2, 70, 7, 7), (2, 25, 9, 11), (1, 3, 1, 1), (0, 4, 2, 2), (2, 1, 3, 5)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", FMAP_SHAPES, ids=str)
def test_pooled_lp_norm_matches_reference(device, dtype, p, channels_last, shape):
    fmap = random_fmap(*shape, dtype=dtype, device=device, channels_last=channels_last, seed=7)
    pooled, norms = lpla_fast.pooled_lp_norm(fmap, p)
    ref_pooled, ref_norms = reference.pooled_lp_norm(fmap.cpu(), p)
    assert pooled.shape == shape[:2] and norms.shape == shape[:1]
    assert_close(pooled, ref_pooled, dtype)
    assert_close(norms, ref_norms, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_pooled_lp_norm_other_layouts_and_no_pooled(device):
    base = random_fmap(3, 8, 5, 6, device=device, seed=8)
    empty = [random_fmap(*shape, device=device, seed=8).transpose(2, 3) for shape in ((2, 0, 3, 3), (3, 5, 0, 2))]
    for fmap in (base[:, ::2], base.permute(0, 1, 3, 2), base[:, :, 1:, :], *empty):
        pooled, norms = lpla_fast.pooled_lp_norm(fmap, 2.0, return_pooled=False)
        assert pooled is None
        assert_close(norms, reference.pooled_lp_norm(fmap.cpu(), 2.0)[1], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_pooled_lp_norm_huge_values_and_nan_sample(device):
    fmap = random_fmap(3, 16, 6, 6, channels_last=True, seed=9) * 1e37
    fmap[1, 3, 2, 2] = math.nan
    for layout in (fmap, fmap.contiguous()):
        _, norms = lpla_fast.pooled_lp_norm(layout.to(device), 2.0)
        assert math.isnan(norms[1])
        assert_close(norms[[0, 2]], reference.pooled_lp_norm(fmap[[0, 2]], 2.0)[1], torch.float32)


# --- lpla_score ------------------------------------------------------------------------------------

CALIBRATION = dict(mean_in=11.0, std_in=1.5, mean_out=12.0, std_out=2.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("log_space", [False, True])
def test_lpla_score_matches_reference(device, dtype, p, log_space):
    views = random_views(9, 4, 100, dtype, device, seed=10)
    if log_space:
        calibration = dict(mean_in=2.4, std_in=0.2, mean_out=2.5, std_out=0.3)
    else:
        calibration = CALIBRATION
    norms, scores = lpla_fast.lpla_score(views, p, log_space=log_space, **calibration)
    ref_norms, ref_scores = reference.lpla_score(views.cpu(), p, log_space=log_space, **calibration)
    assert norms.shape == (9, 4) and scores.shape == (9,)
    assert_close(norms, ref_norms, dtype)
    rtol, _ = tolerance(dtype)
    torch.testing.assert_close(scores.cpu().double(), ref_scores, rtol=rtol, atol=rtol * 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 3, 8), (4, 1, 1), (3, 5, 1)], ids=str)
def test_lpla_score_edge_shapes(device, shape):
    views = torch.rand(shape, generator=torch.Generator().manual_seed(11)).to(device)
    norms, scores = lpla_fast.lpla_score(views, 2.0, 0.5, 0.2, 0.6, 0.3)
    ref_norms, ref_scores = reference.lpla_score(views.cpu(), 2.0, 0.5, 0.2, 0.6, 0.3)
    assert_close(norms, ref_norms, torch.float32)
    torch.testing.assert_close(scores.cpu().double(), ref_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_lpla_score_strided_views(device):
    views = random_views(6, 8, 64, device=device, seed=12)[:, ::2, 1::3]
    norms, scores = lpla_fast.lpla_score(views, 3.0, 4.0, 1.0, 5.0, 1.0)
    ref_norms, ref_scores = reference.lpla_score(views.cpu(), 3.0, 4.0, 1.0, 5.0, 1.0)
    assert_close(norms, ref_norms, torch.float32)
    torch.testing.assert_close(scores.cpu().double(), ref_scores, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("log_space", [False, True])
def test_lpla_score_nonfinite_view_gives_nan_to_its_sample_only(device, log_space):
    views = random_views(4, 3, 20, seed=13)
    views[1, 2, 5] = math.nan
    views[2, 0] = 0.0  # log 0 = -inf in log space
    norms, scores = lpla_fast.lpla_score(views.to(device), 2.0, 1.0, 1.0, 2.0, 1.0, log_space=log_space)
    ref_norms, ref_scores = reference.lpla_score(views, 2.0, 1.0, 1.0, 2.0, 1.0, log_space=log_space)
    assert math.isnan(scores[1])
    assert math.isnan(scores[2]) == log_space
    torch.testing.assert_close(scores.cpu().double(), ref_scores, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert_close(norms, ref_norms, torch.float32)


# --- view_cosine -------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(5, 4, 33), (3, 1, 8), (0, 3, 4), (2, 6, 1), (2, 3, 3000)], ids=str)
def test_view_cosine_matches_reference(device, dtype, shape):
    views = random_views(*shape, dtype=dtype, device=device, seed=14)
    out = lpla_fast.view_cosine(views)
    k = shape[1]
    assert out.shape == (shape[0], k * (k - 1) // 2)
    torch.testing.assert_close(out.cpu().double(), reference.view_cosine(views.cpu()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_view_cosine_zero_view_and_strides(device):
    views = random_views(3, 5, 40, device=device, seed=15).transpose(1, 2).contiguous().transpose(1, 2)
    views[0, 2] = 0
    out = lpla_fast.view_cosine(views)
    torch.testing.assert_close(out.cpu().double(), reference.view_cosine(views.cpu()), rtol=1e-5, atol=1e-5)
    assert (out[0, [1, 4, 7, 8]] == 0).all()  # every pair with view 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_view_cosine_near_float_max(device, dtype):
    # The views' squared norms overflow float32: the normalisation must not.
    views = torch.full((2, 3, 64), 3e38).to(dtype=dtype, device=device)
    views[1, 1] *= -1
    out = lpla_fast.view_cosine(views)
    torch.testing.assert_close(out.cpu().double(), reference.view_cosine(views.cpu()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 4),
    k=st.integers(1, 9),
    d=st.integers(1, 80),
    dtype=st.sampled_from(FLOAT_DTYPES),
    scales=st.lists(st.sampled_from([1.0, 1e-6, 1e4, 1e-30, 1e30, 0.0]), min_size=9, max_size=9),
    strided=st.booleans(),
    special=st.sampled_from([None, math.nan, math.inf]),
    seed=st.integers(0, 2**16),
)
def test_view_cosine_hypothesis(device, n, k, d, dtype, scales, strided, special, seed):
    # Each view has its own magnitude (the float path rescales views outside 2^-40..2^40).
    x = torch.randn(n, k, 2 * d if strided else d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x *= torch.tensor(scales[:k], dtype=torch.float64).view(1, k, 1)
    if special is not None and n > 0:
        x[n - 1, k - 1, seed % x.shape[2]] = special
    views = x.to(dtype)[..., ::2] if strided else x.to(dtype)
    torch.testing.assert_close(lpla_fast.view_cosine(views.to(device)).cpu().double(), reference.view_cosine(views),
                               rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k, d", [(4, 16), (8, 64), (8, 256)])
@pytest.mark.parametrize("scale", [1.0, 1e-30, 1e30, 1e-12, 0.0, math.nan, math.inf])
def test_view_cosine_whole_tiles_at_every_scale(device, k, d, scale):
    # float32 rows that fill whole tiles take the path without a copy, kept only where every
    # squared norm is within 2^-80..2^80: one view of each sample at `scale` sends the others back.
    x = torch.randn(3, k, d, generator=torch.Generator().manual_seed(k * d), dtype=torch.float64)
    x[1, k // 2] *= scale
    x[2, 0, 5] = scale
    views = x.float()
    torch.testing.assert_close(lpla_fast.view_cosine(views.to(device)).cpu().double(), reference.view_cosine(views),
                               rtol=1e-5, atol=1e-5, equal_nan=True)


# --- every layout of small and empty shapes ------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_every_permutation_of_small_and_empty_shapes(device):
    # Sizes 0, 1 and 3 on every axis, under every axis permutation: empty tensors with odd
    # strides, size-1 axes with arbitrary strides, and every non-contiguous layout.
    def close(got, want):
        for g, w in zip(got, want):
            if w is not None:
                assert g.shape == w.shape
                torch.testing.assert_close(g.cpu().double(), w.double(), rtol=1e-4, atol=1e-6, equal_nan=True)

    g = torch.Generator().manual_seed(17)
    for dims in itertools.product([0, 1, 3], repeat=4):
        x = torch.randn(*dims, generator=g).to(device)
        for perm in itertools.permutations(range(4)):
            fmap = x.permute(perm)
            close(lpla_fast.pooled_lp_norm(fmap, 2.0), reference.pooled_lp_norm(fmap.cpu(), 2.0))
            close([lpla_fast.lp_norm(fmap, 3.0)], [reference.lp_norm(fmap.cpu(), 3.0)])
    for dims in itertools.product([0, 1, 2, 5], repeat=3):
        x = (torch.rand(*dims, generator=g) + 0.1).to(device)
        for perm in itertools.permutations(range(3)):
            views = x.permute(perm)
            close(lpla_fast.lpla_score(views, 2.0, 1.0, 0.5, 2.0, 1.5), reference.lpla_score(views.cpu(), 2.0, 1.0, 0.5, 2.0, 1.5))
            close([lpla_fast.view_cosine(views)], [reference.view_cosine(views.cpu())])


# --- registration: opcheck and torch.compile ---------------------------------------------------


def _opcheck_cases(device):
    g = torch.Generator().manual_seed(16)
    x = torch.randn(5, 12, generator=g).to(device)
    views = torch.randn(4, 3, 10, generator=g).to(device)
    fmap = torch.rand(2, 6, 3, 3, generator=g).to(device)
    ops = torch.ops.lpla_fast
    return [
        (ops.lp_norm.default, (x, 2.0)),
        (ops.lp_norm.default, (x.t(), 2.5)),
        (ops.pooled_lp_norm.default, (fmap, 1.0, True)),
        (ops.pooled_lp_norm.default, (fmap.contiguous(memory_format=torch.channels_last), INF, False)),
        (ops.lpla_score.default, (views, 2.0, 1.0, 0.5, 1.5, 0.7, False)),
        (ops.lpla_score.default, (views, 3.0, 0.0, 1.0, 0.1, 1.0, True)),
        (ops.view_cosine.default, (views,)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in _opcheck_cases(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_calls_the_ops(device):
    def features(views, fmap):
        norms, scores = lpla_fast.lpla_score(views, 2.0, 1.0, 0.5, 1.5, 0.7)
        _, pooled_norms = lpla_fast.pooled_lp_norm(fmap, 2.0, return_pooled=False)
        return scores + pooled_norms, lpla_fast.view_cosine(views), lpla_fast.lp_norm(norms, INF)

    compiled = torch.compile(features, backend="aot_eager", fullgraph=True)
    views = random_views(4, 3, 16, device=device, seed=17)
    fmap = random_fmap(4, 8, 3, 3, device=device, seed=17)
    for got, want in zip(compiled(views, fmap), features(views, fmap)):
        torch.testing.assert_close(got, want)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_errors_name_argument_and_value(device):
    x = torch.randn(3, 4, device=device)
    views = torch.randn(2, 3, 4, device=device)
    fmap = torch.rand(2, 3, 4, 4, device=device)
    ops = torch.ops.lpla_fast
    cases = [
        (lambda: ops.lp_norm(torch.tensor(1.0, device=device), 2.0), "x must have at least 1 dim"),
        (lambda: ops.pooled_lp_norm(fmap[0], 2.0, True), r"fmap must be 4-D \(N, C, H, W\), got 3-D"),
        (lambda: ops.lpla_score(x, 2.0, 0.0, 1.0, 0.0, 1.0, False), r"views must be 3-D \(N, K, D\), got 2-D"),
        (lambda: ops.view_cosine(x), r"views must be 3-D \(N, K, D\), got 2-D"),
        (lambda: ops.lp_norm(x.int(), 2.0), "x must be float32, float64, float16 or bfloat16, got Int"),
        (lambda: ops.view_cosine(views.long()), "views must be float32.*got Long"),
        (lambda: ops.pooled_lp_norm(fmap.to(torch.uint8), 2.0, True), "fmap must be float32.*got Byte"),
        (lambda: ops.lp_norm(x, 0.0), r"p must be in \(0, inf\], got p=0"),
        (lambda: ops.lp_norm(x, -1.5), r"p must be in \(0, inf\], got p=-1.5"),
        (lambda: ops.lp_norm(x, math.nan), r"p must be in \(0, inf\], got p=nan"),
        (lambda: ops.lpla_score(views, 2.0, 0.0, 0.0, 0.0, 1.0, False), "std_in must be finite and > 0, got std_in=0"),
        (lambda: ops.lpla_score(views, 2.0, 0.0, 1.0, 0.0, -2.0, False), "std_out must be finite and > 0, got std_out=-2"),
        (lambda: ops.lpla_score(views, 2.0, math.inf, 1.0, 0.0, 1.0, False), "mean_in must be finite, got mean_in=inf"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()


def test_wrappers_reject_bad_p_before_dispatch():
    x = torch.randn(2, 3)
    for p in (0, -1, math.nan):
        with pytest.raises(ValueError, match=r"p must be in \(0, inf\], got p="):
            lpla_fast.lp_norm(x, p)
    with pytest.raises(ValueError, match="got p=-2.0"):
        lpla_fast.lpla_score(torch.randn(2, 2, 3), -2, 0, 1, 0, 1)
