"""The fused ops of the LpLA statistics (view_norm_stats) and of the pooled encoder tail
(pooled_lpla_score) against their float64 reference, and pooled_lp_norm's autograd."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lpla_fast
from lpla_fast import reference
from lpla_fast.testing import FLOAT_DTYPES, random_fmap, random_views

# Every test of the compiled ops runs each build of the CPU kernels this CPU supports.
pytestmark = pytest.mark.usefixtures("cpu_capability")

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]
P_VALUES = [1.0, 2.0, math.inf, 3.0, 2.5, 0.5]
INF = math.inf
CALIBRATION = dict(mean_in=11.0, std_in=1.5, mean_out=12.0, std_out=2.0)
LOG_CALIBRATION = dict(mean_in=2.4, std_in=0.2, mean_out=2.5, std_out=0.3)


def rtol_for(dtype):
    return 1e-10 if dtype == torch.float64 else 1e-4


def assert_close(actual, expected, dtype, atol=None):
    rtol = rtol_for(dtype)
    atol = (1e-300 if dtype == torch.float64 else 1e-30) if atol is None else atol
    torch.testing.assert_close(actual.cpu().double(), expected.cpu().double(), rtol=rtol, atol=atol, equal_nan=True)


def result_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- view_norm_stats ------------------------------------------------------------------------------


def check_view_norm_stats(views, p, log_space, dtype):
    got = lpla_fast.view_norm_stats(views, p, log_space=log_space)
    want = reference.view_norm_stats(views.cpu(), p, log_space=log_space)
    n, k = views.shape[0], views.shape[1]
    for out, shape in zip(got, [(n, k), (n,), (n,), (n,)]):
        assert out.shape == shape and out.dtype == result_dtype(dtype) and out.device == views.device
    norms, mean, std, centre = got
    assert_close(norms, want[0], dtype)
    assert_close(mean, want[1], dtype)
    # The spread is a difference of near-equal statistics: its error is relative to their size.
    scale = want[1].abs().nan_to_num().max().item() if n > 0 and k > 0 else 1.0
    assert_close(std, want[2], dtype, atol=rtol_for(dtype) * scale)
    assert_close(centre, want[3], dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("log_space", [False, True], ids=["norm", "log"])
@pytest.mark.parametrize("shape", [(9, 4, 100), (5, 8, 37), (3, 16, 512)], ids=str)
def test_view_norm_stats_matches_reference(device, dtype, p, log_space, shape):
    views = random_views(*shape, dtype=dtype, device=device, seed=21)
    check_view_norm_stats(views, p, log_space, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(0, 3, 8), (4, 1, 5), (3, 5, 1), (2, 0, 4), (3, 2, 0), (1, 1, 1), (3, 150, 20)], ids=str)
def test_view_norm_stats_edge_shapes(device, dtype, shape):
    views = random_views(*shape, dtype=dtype, device=device, seed=22)
    check_view_norm_stats(views, 2.0, False, dtype)
    if shape[1] == 1 and shape[0] > 0:
        _, _, std, centre = lpla_fast.view_norm_stats(views, 2.0)
        assert (std == 0).all()  # K = 1: no spread
        assert_close(centre, reference.lp_norm(views[:, 0].cpu(), 2.0), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [1.0, 2.5, INF])
def test_view_norm_stats_any_strides(device, p):
    base = random_views(6, 8, 64, device=device, seed=23)
    for views in (base[:, ::2, 1::3], base.transpose(0, 1).contiguous().transpose(0, 1), base.permute(2, 1, 0)):
        check_view_norm_stats(views, p, True, torch.float32)
    expanded = random_views(1, 3, 40, device=device, seed=23).expand(5, 3, 40)
    check_view_norm_stats(expanded, p, False, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_view_norm_stats_nonfinite_view_gives_nan_to_its_sample_only(device, dtype):
    views = random_views(5, 3, 20, dtype=dtype, seed=24)
    views[1, 2, 5] = math.nan
    views[2, 0, 3] = math.inf
    views[3, 1] = 0.0  # log 0 = -inf in log space only
    for log_space in (False, True):
        norms, mean, std, centre = (t.cpu() for t in lpla_fast.view_norm_stats(views.to(device), 2.0, log_space))
        want = reference.view_norm_stats(views, 2.0, log_space)
        assert math.isnan(mean[1]) and math.isnan(std[1]) and math.isnan(centre[1])
        assert math.isnan(mean[2]) and math.isnan(std[2]) and centre[2] == INF
        assert math.isnan(mean[3]) == log_space
        for got, ref in zip((norms, mean, centre), (want[0], want[1], want[3])):
            assert_close(got, ref, dtype)
        assert_close(std[[0, 3, 4]], want[2][[0, 3, 4]], dtype, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_view_norm_stats_identical_views(device):
    # Views that agree have no spread and a resultant ratio of exactly 1 (up to rounding).
    views = random_views(4, 1, 50, device=device, seed=25).expand(4, 6, 50).contiguous()
    norms, mean, std, centre = lpla_fast.view_norm_stats(views, 3.0)
    torch.testing.assert_close(std.cpu(), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close((centre / norms.mean(1)).cpu(), torch.ones(4), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("magnitude", [1e30, 1e-30, 1e200, 1e-200])
def test_view_norm_stats_huge_and_tiny_values(dtype, magnitude):
    if dtype == torch.float32 and not 1e-38 < magnitude < 1e38:
        pytest.skip("not representable in float32")
    views = (random_views(3, 4, 64, dtype=torch.float64, seed=26) * magnitude).to(dtype)
    for p in (2.0, 2.5, INF):
        check_view_norm_stats(views, p, True, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k", [4, 70])
def test_view_norm_stats_view_sum_beyond_float_range(device, dtype, k):
    # The views' sum overflows float32 (their mean does not): the view mean must not.
    views = torch.full((2, k, 40), 3e38, dtype=torch.float64)
    views[1, :, ::2] *= -0.5
    views = views.to(dtype)
    check_view_norm_stats(views.to(device), INF, False, dtype)
    assert torch.isfinite(lpla_fast.view_norm_stats(views.to(device), INF)[3]).all()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 5),
    k=st.integers(1, 9),
    d=st.integers(1, 70),
    p=st.one_of(st.sampled_from(P_VALUES), st.floats(0.3, 12.0)),
    dtype=st.sampled_from(FLOAT_DTYPES),
    log_space=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_view_norm_stats_hypothesis(n, k, d, p, dtype, log_space, seed):
    check_view_norm_stats(random_views(n, k, d, dtype=dtype, seed=seed), p, log_space, dtype)


# --- pooled_lpla_score -------------------------------------------------------------------------------


def check_pooled_lpla_score(fmap, k, p, log_space, dtype, calibration):
    pooled, norms, scores = lpla_fast.pooled_lpla_score(fmap, k, p, log_space=log_space, **calibration)
    ref_pooled, ref_norms, ref_scores = reference.pooled_lpla_score(fmap.cpu(), k, p, log_space=log_space, **calibration)
    n = fmap.shape[0] // k
    assert pooled.shape == fmap.shape[:2] and norms.shape == (n, k) and scores.shape == (n,)
    assert {pooled.dtype, norms.dtype, scores.dtype} == {result_dtype(dtype)}
    assert_close(pooled, ref_pooled, dtype)
    assert_close(norms, ref_norms, dtype)
    rtol = rtol_for(dtype)
    torch.testing.assert_close(scores.cpu().double(), ref_scores, rtol=rtol, atol=rtol * 10, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("log_space", [False, True], ids=["norm", "log"])
def test_pooled_lpla_score_matches_reference(device, dtype, p, channels_last, log_space):
    fmap = random_fmap(12, 24, 5, 7, dtype=dtype, device=device, channels_last=channels_last, seed=27)
    if log_space:
        calibration = dict(mean_in=-0.5, std_in=0.2, mean_out=-0.4, std_out=0.3)
    else:
        calibration = dict(mean_in=0.9, std_in=0.3, mean_out=1.0, std_out=0.4)
    check_pooled_lpla_score(fmap, 4, p, log_space, dtype, calibration)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [1.0, 2.0, 2.5, INF])
def test_pooled_lpla_score_equals_pooled_lp_norm_then_lpla_score(device, p):
    fmap = random_fmap(15, 64, 7, 7, device=device, channels_last=True, seed=28)
    pooled, norms, scores = lpla_fast.pooled_lpla_score(fmap, 3, p, log_space=True, **LOG_CALIBRATION)
    two_step_pooled, _ = lpla_fast.pooled_lp_norm(fmap, p)
    two_step_norms, two_step_scores = lpla_fast.lpla_score(two_step_pooled.view(5, 3, 64), p, log_space=True,
                                                          **LOG_CALIBRATION)
    torch.testing.assert_close(pooled, two_step_pooled)
    torch.testing.assert_close(norms, two_step_norms)
    torch.testing.assert_close(scores, two_step_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_pooled_lpla_score_layouts_edge_shapes_and_no_pooled(device):
    base = random_fmap(6, 8, 5, 6, device=device, seed=29)
    cases = [(base[:, ::2], 2), (base.permute(0, 1, 3, 2), 3), (base[:, :, 1:, :], 6), (base, 1),
             (random_fmap(0, 4, 2, 2, device=device), 3), (random_fmap(4, 0, 3, 3, device=device), 2),
             (random_fmap(2, 3, 1, 1, device=device), 1)]
    for fmap, k in cases:
        check_pooled_lpla_score(fmap, k, 2.0, False, torch.float32, CALIBRATION)
        pooled, norms, scores = lpla_fast.pooled_lpla_score(fmap, k, 2.0, return_pooled=False, **CALIBRATION)
        assert pooled is None
        assert_close(norms, reference.pooled_lpla_score(fmap.cpu(), k, 2.0, **CALIBRATION)[1], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_pooled_lpla_score_nan_view_gives_nan_to_its_sample_only(device):
    fmap = random_fmap(6, 16, 4, 4, channels_last=True, seed=30)
    fmap[3, 5, 1, 1] = math.nan  # sample 1 (rows 2, 3)
    fmap[4] = 0.0  # a zero view: log 0 in log space (sample 2)
    for log_space in (False, True):
        _, norms, scores = lpla_fast.pooled_lpla_score(fmap.to(device), 2, 2.0, log_space=log_space, **CALIBRATION)
        assert math.isnan(scores[1]) and math.isnan(norms[1, 1]) and not math.isnan(norms[1, 0])
        assert math.isnan(scores[2]) == log_space
        assert not math.isnan(scores[0])


# --- pooled_lp_norm autograd --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 2.5, 0.7, INF])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_pooled_lp_norm_gradcheck(device, p, channels_last):
    fmap = torch.randn(3, 5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(31)).to(device)
    if channels_last:
        fmap = fmap.contiguous(memory_format=torch.channels_last)
    fmap.requires_grad_()
    torch.autograd.gradcheck(lambda f: lpla_fast.pooled_lp_norm(f, p), (fmap,))
    torch.autograd.gradcheck(lambda f: lpla_fast.pooled_lp_norm(f, p, return_pooled=False)[1], (fmap,))
    torch.autograd.gradcheck(lambda f: lpla_fast.pooled_lp_norm(f, p)[0], (fmap,))


@pytest.mark.parametrize("device", DEVICES)
def test_pooled_lp_norm_gradient_matches_torch_in_float32(device):
    fmap = random_fmap(4, 6, 3, 3, device=device, seed=32).requires_grad_()
    pooled, norms = lpla_fast.pooled_lp_norm(fmap, 2.0)
    (pooled.sum() + norms.sum()).backward()
    expected = fmap.detach().clone().requires_grad_()
    torch_pooled = expected.mean((2, 3))
    (torch_pooled.sum() + torch.linalg.vector_norm(torch_pooled, 2.0, dim=1).sum()).backward()
    torch.testing.assert_close(fmap.grad, expected.grad)
    # A zero row has a zero (sub)gradient, never NaN.
    zero = torch.zeros(1, 4, 2, 2, device=device, requires_grad=True)
    lpla_fast.pooled_lp_norm(zero, 2.0)[1].sum().backward()
    assert (zero.grad == 0).all()


# --- every layout of small and empty shapes --------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_every_permutation_of_small_and_empty_shapes(device):
    def close(got, want):
        for g, w in zip(got, want):
            if g is not None:
                assert g.shape == w.shape
                torch.testing.assert_close(g.cpu().double(), w.double(), rtol=1e-4, atol=1e-5, equal_nan=True)

    g = torch.Generator().manual_seed(33)
    for dims in itertools.product([0, 1, 2, 5], repeat=3):
        x = (torch.rand(*dims, generator=g) + 0.1).to(device)
        for perm in itertools.permutations(range(3)):
            views = x.permute(perm)
            close(lpla_fast.view_norm_stats(views, 2.0, True), reference.view_norm_stats(views.cpu(), 2.0, True))
    for dims in itertools.product([0, 2, 3], [0, 1, 3], [0, 1, 3], [1, 3]):
        x = (torch.rand(*dims, generator=g) + 0.1).to(device)
        for perm in itertools.permutations(range(1, 4)):
            fmap = x.permute(0, *perm)
            for k in (1, fmap.shape[0]) if fmap.shape[0] else (1, 2):
                close(lpla_fast.pooled_lpla_score(fmap, k, 2.0, **CALIBRATION),
                      reference.pooled_lpla_score(fmap.cpu(), k, 2.0, **CALIBRATION))


# --- registration and bad input ---------------------------------------------------------------------------


def _opcheck_cases(device):
    views = random_views(4, 3, 10, device=device, seed=34)
    fmap = random_fmap(6, 5, 3, 3, device=device, seed=34)
    ops = torch.ops.lpla_fast
    cl = fmap.contiguous(memory_format=torch.channels_last)
    return [
        (ops.view_norm_stats.default, (views, 2.0, False)),
        (ops.view_norm_stats.default, (views.transpose(0, 1), 2.5, True)),
        (ops.pooled_lpla_score.default, (fmap, 3, 2.0, 1.0, 0.5, 1.5, 0.7, False, True)),
        (ops.pooled_lpla_score.default, (cl, 2, INF, 0.0, 1.0, 0.1, 1.0, True, False)),
        (ops.pooled_lp_norm.default, (fmap.double().requires_grad_(), 2.0, True)),
        (ops.pooled_lp_norm.default, (cl.double().requires_grad_(), 3.0, False)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in _opcheck_cases(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_calls_the_ops(device):
    def features(views, fmap):
        norms, mean, std, centre = lpla_fast.view_norm_stats(views, 2.0, log_space=True)
        _, pooled_norms, scores = lpla_fast.pooled_lpla_score(fmap, 4, 2.0, 1.0, 0.5, 1.5, 0.7, return_pooled=False)
        return mean + std + centre / norms.mean(1), scores + pooled_norms.sum(1)

    compiled = torch.compile(features, backend="aot_eager", fullgraph=True)
    views = random_views(4, 3, 16, device=device, seed=35)
    fmap = random_fmap(16, 8, 3, 3, device=device, seed=35)
    for got, want in zip(compiled(views, fmap), features(views, fmap)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_errors_name_argument_and_value(device):
    views = torch.randn(2, 3, 4, device=device)
    fmap = torch.rand(6, 3, 4, 4, device=device)
    ops = torch.ops.lpla_fast
    cases = [
        (lambda: ops.view_norm_stats(views[0], 2.0, False), r"views must be 3-D \(N, K, D\), got 2-D"),
        (lambda: ops.view_norm_stats(views.int(), 2.0, False), "views must be float32.*got Int"),
        (lambda: ops.view_norm_stats(views, 0.0, False), r"p must be in \(0, inf\], got p=0"),
        (lambda: ops.pooled_lpla_score(fmap[0], 1, 2.0, 0.0, 1.0, 0.0, 1.0, False, True),
         r"fmap must be 4-D \(N\*K, C, H, W\), got 3-D"),
        (lambda: ops.pooled_lpla_score(fmap, 4, 2.0, 0.0, 1.0, 0.0, 1.0, False, True),
         "must be a multiple of num_views, got 6 rows and num_views=4"),
        (lambda: ops.pooled_lpla_score(fmap, 0, 2.0, 0.0, 1.0, 0.0, 1.0, False, True), "num_views must be >= 1, got num_views=0"),
        (lambda: ops.pooled_lpla_score(fmap, 2, -1.0, 0.0, 1.0, 0.0, 1.0, False, True), r"p must be in \(0, inf\], got p=-1"),
        (lambda: ops.pooled_lpla_score(fmap, 2, 2.0, 0.0, 0.0, 0.0, 1.0, False, True), "std_in must be finite and > 0, got std_in=0"),
        (lambda: ops.pooled_lpla_score(fmap, 2, 2.0, 0.0, 1.0, math.nan, 1.0, False, True), "mean_out must be finite, got mean_out=nan"),
        (lambda: ops.pooled_lpla_score(fmap.long(), 2, 2.0, 0.0, 1.0, 0.0, 1.0, False, True), "fmap must be float32.*got Long"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()
    with pytest.raises(ValueError, match=r"p must be in \(0, inf\], got p=-2.0"):
        lpla_fast.view_norm_stats(views, -2)
    with pytest.raises(ValueError, match=r"p must be in \(0, inf\], got p=nan"):
        lpla_fast.pooled_lpla_score(fmap, 2, math.nan, 0, 1, 0, 1)
