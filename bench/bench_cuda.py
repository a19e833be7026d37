"""CUDA benchmarks of the compiled ops: device copy bandwidth as the speed of light, and
torch eager code that computes the same thing.

    pytest bench/bench_cuda.py --benchmark-only      # pytest-benchmark table (skips without a GPU)
    python bench/bench_cuda.py [out.json]            # plain table, needs only torch

Every timed function ends with torch.cuda.synchronize(), so a round is the kernel's full
run. extra_info holds rows/s, the GB/s read, and the ratio of that to the copy bandwidth
(bytes read + bytes written per second by a device-to-device copy of the same size).
"""

from __future__ import annotations

import json
import math
import statistics
import sys

import pytest
import torch

import lpla_fast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GIB = 1 << 30
D = 256  # embedding width of the lp_norm inputs
K = 8  # views per sample for lpla_score / view_cosine
ROUNDS = 20


# ---- inputs ----------------------------------------------------------------------------

_cache: dict = {}


def _cached(key, make):
    if key not in _cache:
        _cache.clear()  # one 1 GiB input at a time keeps the device memory bounded
        torch.manual_seed(0)
        _cache[key] = make()
    return _cache[key]


def rows_input(dtype, nbytes=GIB, d=D):
    """(N, d) standard normal rows of nbytes in total."""
    n = nbytes // (d * torch.finfo(dtype).bits // 8)
    return _cached(("rows", dtype, nbytes, d), lambda: torch.randn(n, d, device="cuda", dtype=dtype))


def views_input(dtype, nbytes=GIB // 2):
    n = nbytes // (K * D * torch.finfo(dtype).bits // 8)
    return _cached(("views", dtype, nbytes), lambda: torch.randn(n, K, D, device="cuda", dtype=dtype))


def fmap_input(channels_last, nbytes=GIB // 2, c=512, hw=7):
    n = nbytes // (c * hw * hw * 4) // K * K  # whole samples of K views, for pooled_lpla_score

    def make():
        x = torch.randn(n, c, hw, hw, device="cuda")
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    return _cached(("fmap", channels_last, nbytes), make)


# ---- eager equivalents -------------------------------------------------------------------


def eager_lp_norm(x, p):
    return torch.linalg.vector_norm(x, p, dim=-1, dtype=torch.float32 if x.dtype != torch.float64 else None)


def eager_lpla_score(views, p, mean_in, std_in, mean_out, std_out):
    s = torch.linalg.vector_norm(views.float(), p, dim=-1)
    zin = (s - mean_in) / std_in
    zout = (s - mean_out) / std_out
    llr = -0.5 * zin**2 + 0.5 * zout**2 - (math.log(std_in) - math.log(std_out))
    return s, llr.masked_fill(~torch.isfinite(s), math.nan).sum(-1)


def eager_pooled_lp_norm(fmap, p):
    pooled = fmap.mean(dim=(2, 3))
    return pooled, torch.linalg.vector_norm(pooled, p, dim=-1)


def eager_view_norm_stats(views, p):
    s = torch.linalg.vector_norm(views.float(), p, dim=-1)
    t = s.log()
    return s, t.mean(1), t.std(1), torch.linalg.vector_norm(views.float().mean(1), p, dim=-1)


def eager_pooled_lpla_score(fmap, p, mean_in, std_in, mean_out, std_out):
    pooled = fmap.mean(dim=(2, 3))
    s = torch.linalg.vector_norm(pooled, p, dim=-1).view(-1, K)
    zin = (s - mean_in) / std_in
    zout = (s - mean_out) / std_out
    llr = -0.5 * zin**2 + 0.5 * zout**2 - (math.log(std_in) - math.log(std_out))
    return pooled, s, llr.masked_fill(~torch.isfinite(s), math.nan).sum(-1)


def ours_pooled_lpla_score(fmap, p, mean_in, std_in, mean_out, std_out):
    return lpla_fast.pooled_lpla_score(fmap, K, p, mean_in, std_in, mean_out, std_out)


def eager_view_cosine(views):
    unit = torch.nn.functional.normalize(views.float(), dim=-1, eps=1e-12)
    gram = unit @ unit.transpose(1, 2)
    i, j = torch.triu_indices(views.shape[1], views.shape[1], 1, device=views.device)
    return gram[:, i, j]


# ---- timing ----------------------------------------------------------------------------


def synced(fn, *args):
    def run():
        out = fn(*args)
        torch.cuda.synchronize()
        return out

    return run


def event_time(fn, rounds=ROUNDS):
    """Median seconds of fn() over rounds, after two warm-up calls (CUDA events)."""
    fn()
    fn()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


_copy_gbps: dict = {}


def copy_gbps():
    """Device copy bandwidth, GB/s of (read + write), of a 1 GiB fp32 copy_."""
    if "v" not in _copy_gbps:
        src = torch.empty(GIB // 4, device="cuda")
        dst = torch.empty_like(src)
        seconds = event_time(lambda: dst.copy_(src))
        _copy_gbps["v"] = 2 * src.numel() * 4 / seconds / 1e9
        del src, dst
    return _copy_gbps["v"]


def record(benchmark, rows, nbytes):
    seconds = benchmark.stats.stats.median
    gbps = nbytes / seconds / 1e9
    benchmark.extra_info.update(
        rows_per_s=rows / seconds,
        gb_per_s=gbps,
        copy_gb_per_s=copy_gbps(),
        ratio_to_copy=gbps / copy_gbps(),
    )


def run_bench(benchmark, fn):
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=2, iterations=1)


# ---- benchmarks ------------------------------------------------------------------------

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PS = [1.0, 2.0, math.inf, 3.0]


def test_copy_bandwidth(benchmark):
    src = torch.empty(GIB // 4, device="cuda")
    dst = torch.empty_like(src)
    run_bench(benchmark, synced(dst.copy_, src))
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(gb_per_s=2 * src.numel() * 4 / seconds / 1e9, bytes_read=src.numel() * 4)


@pytest.mark.parametrize("p", PS, ids=lambda p: f"p{p:g}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", ["lpla", "eager"])
def test_lp_norm(benchmark, impl, dtype, p):
    benchmark.group = f"lp_norm-{dtype}-p{p:g}"
    x = rows_input(DTYPES[dtype])
    fn = lpla_fast.lp_norm if impl == "lpla" else eager_lp_norm
    run_bench(benchmark, synced(fn, x, p))
    record(benchmark, x.shape[0], x.numel() * x.element_size())


@pytest.mark.parametrize("p", [2.0, 3.0], ids=lambda p: f"p{p:g}")
@pytest.mark.parametrize("impl", ["lpla", "eager"])
def test_lpla_score(benchmark, impl, p):
    benchmark.group = f"lpla_score-p{p:g}"
    views = views_input(torch.float32)
    params = (p, 10.0, 2.0, 12.0, 3.0)
    if impl == "lpla":
        fn = synced(lpla_fast.lpla_score, views, *params)
    else:
        fn = synced(eager_lpla_score, views, *params)
    run_bench(benchmark, fn)
    record(benchmark, views.shape[0], views.numel() * views.element_size())


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("impl", ["lpla", "eager"])
def test_pooled_lp_norm(benchmark, impl, layout):
    benchmark.group = f"pooled_lp_norm-{layout}"
    fmap = fmap_input(layout == "channels_last")
    fn = lpla_fast.pooled_lp_norm if impl == "lpla" else eager_pooled_lp_norm
    run_bench(benchmark, synced(fn, fmap, 2.0))
    record(benchmark, fmap.shape[0], fmap.numel() * fmap.element_size())


@pytest.mark.parametrize("p", [2.0, 3.0], ids=lambda p: f"p{p:g}")
@pytest.mark.parametrize("impl", ["lpla", "eager"])
def test_view_norm_stats(benchmark, impl, p):
    benchmark.group = f"view_norm_stats-p{p:g}"
    views = views_input(torch.float32)
    if impl == "lpla":
        fn = synced(lpla_fast.view_norm_stats, views, p, True)
    else:
        fn = synced(eager_view_norm_stats, views, p)
    run_bench(benchmark, fn)
    record(benchmark, views.shape[0], views.numel() * views.element_size())


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("impl", ["lpla", "eager"])
def test_pooled_lpla_score(benchmark, impl, layout):
    benchmark.group = f"pooled_lpla_score-{layout}"
    fmap = fmap_input(layout == "channels_last")
    fn = ours_pooled_lpla_score if impl == "lpla" else eager_pooled_lpla_score
    run_bench(benchmark, synced(fn, fmap, 2.0, 10.0, 2.0, 12.0, 3.0))
    record(benchmark, fmap.shape[0] // K, fmap.numel() * fmap.element_size())


@pytest.mark.parametrize("impl", ["lpla", "eager"])
def test_view_cosine(benchmark, impl):
    benchmark.group = "view_cosine"
    views = views_input(torch.float32)
    fn = lpla_fast.view_cosine if impl == "lpla" else eager_view_cosine
    run_bench(benchmark, synced(fn, views))
    record(benchmark, views.shape[0], views.numel() * views.element_size())


# ---- plain runner (no pytest-benchmark needed) -------------------------------------------


def plain_cases():
    """(name, make_input, ours, eager): ours and eager take the input."""
    params = lambda p: (p, 10.0, 2.0, 12.0, 3.0)  # noqa: E731
    for dname, dtype in DTYPES.items():
        for p in PS:
            yield (f"lp_norm {dname} p={p:g}", lambda d=dtype: rows_input(d),
                   lambda x, p=p: lpla_fast.lp_norm(x, p), lambda x, p=p: eager_lp_norm(x, p))
    for p in (2.0, 3.0):
        yield (f"lpla_score fp32 p={p:g}", lambda: views_input(torch.float32),
               lambda v, p=p: lpla_fast.lpla_score(v, *params(p)), lambda v, p=p: eager_lpla_score(v, *params(p)))
    yield ("view_cosine fp32", lambda: views_input(torch.float32), lpla_fast.view_cosine, eager_view_cosine)
    for p in (2.0, 3.0):
        yield (f"view_norm_stats fp32 log p={p:g}", lambda: views_input(torch.float32),
               lambda v, p=p: lpla_fast.view_norm_stats(v, p, True), lambda v, p=p: eager_view_norm_stats(v, p))
    for cl in (False, True):
        yield (f"pooled_lp_norm fp32 {'channels_last' if cl else 'nchw'}", lambda cl=cl: fmap_input(cl),
               lambda f: lpla_fast.pooled_lp_norm(f, 2.0), lambda f: eager_pooled_lp_norm(f, 2.0))
        yield (f"pooled_lpla_score fp32 {'channels_last' if cl else 'nchw'} K={K}", lambda cl=cl: fmap_input(cl),
               lambda f: ours_pooled_lpla_score(f, *params(2.0)), lambda f: eager_pooled_lpla_score(f, *params(2.0)))


def main(out_path=None):
    copy = copy_gbps()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth (read + write) {copy:.0f} GB/s")
    print(f"{'case':34s} {'ms':>8s} {'GB/s':>8s} {'x copy':>7s} {'eager ms':>9s} {'speedup':>8s}")
    rows = []
    for name, make_input, ours, eager in plain_cases():
        x = make_input()
        t_ours, t_eager = event_time(lambda: ours(x)), event_time(lambda: eager(x))
        gbps = x.numel() * x.element_size() / t_ours / 1e9
        r = dict(case=name, ms=t_ours * 1e3, gb_per_s=gbps, ratio_to_copy=gbps / copy,
                 rows_per_s=x.shape[0] / t_ours, eager_ms=t_eager * 1e3, speedup=t_eager / t_ours)
        rows.append(r)
        print(f"{name:34s} {r['ms']:8.3f} {gbps:8.0f} {r['ratio_to_copy']:7.2f} {r['eager_ms']:9.3f} "
              f"{r['speedup']:8.2f}", flush=True)
    if out_path:
        with open(out_path, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "copy_gb_per_s": copy, "cases": rows}, f, indent=1)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    main(sys.argv[1] if len(sys.argv) > 1 else None)
