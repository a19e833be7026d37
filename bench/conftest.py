"""pytest setup of the benchmarks: collects bench_*.py, shares the inputs, and prints (and
writes to LPLA_BENCH_SUMMARY) a Markdown summary of the run.

Input size: LPLA_BENCH_ROWS rows of D=512 (default 262144: 0.5 GB of fp32); set it small
(e.g. 4096) for a quick check. LPLA_BENCH_ROUNDS sets the timed rounds (default 5).
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from lpla_fast.testing import bench_rows, random_fmap, random_rows
from summarize import markdown_table

DIM = 512
VIEWS_PER_SAMPLE = 8
RESULTS = []


def pytest_collect_file(file_path, parent):
    # A file named on the command line is collected by pytest itself: do not collect it twice.
    if parent.session.isinitpath(file_path):
        return None
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def rows():
    """(N, 512) fp32 rows; N from LPLA_BENCH_ROWS."""
    return random_rows(bench_rows(), DIM, torch.float32, seed=0)


@pytest.fixture(scope="session")
def views(rows):
    """The same data as (N/8, 8, 512) views."""
    n = rows.shape[0] // VIEWS_PER_SAMPLE
    return rows[: n * VIEWS_PER_SAMPLE].view(n, VIEWS_PER_SAMPLE, DIM)


@pytest.fixture(scope="session", params=["nchw", "channels_last"])
def fmap(request):
    """A ResNet-50-like last feature map (B, 2048, 7, 7) of about the size of `rows`."""
    batch = max(1, bench_rows() * DIM // (2048 * 7 * 7))
    return random_fmap(batch, 2048, 7, 7, channels_last=request.param == "channels_last", seed=1)


@pytest.fixture(scope="session")
def read_bandwidth(rows):
    """GB/s of x.sum() over the fp32 rows, best of 5: the speed of light of a streaming op."""
    rows.sum()
    best = min(_timed(rows.sum) for _ in range(5))
    return rows.numel() * rows.element_size() / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.fixture
def measure(benchmark, read_bandwidth):
    """measure(fn, group, impl, nbytes, nrows): time fn and record rows/s, GB/s and the
    ratio to the read bandwidth in extra_info and in the run's summary."""

    def run(fn, group, impl, nbytes, nrows):
        benchmark.group = group
        benchmark.extra_info.update(impl=impl, bytes=nbytes, rows=nrows)
        rounds = int(os.environ.get("LPLA_BENCH_ROUNDS", "5"))
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
        if benchmark.stats is None:  # --benchmark-disable
            return
        best = benchmark.stats.stats.min
        gb_per_s = nbytes / best / 1e9
        info = dict(rows_per_s=nrows / best, gb_per_s=gb_per_s, bandwidth_ratio=gb_per_s / read_bandwidth)
        benchmark.extra_info.update(info)
        RESULTS.append(dict(info, group=group, impl=impl, seconds=best))

    return run


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    table = markdown_table(RESULTS)
    terminalreporter.write_sep("-", "lpla_fast benchmark summary")
    terminalreporter.write(table)
    path = os.environ.get("LPLA_BENCH_SUMMARY")
    if path:
        with open(path, "w") as f:
            f.write(table)
        terminalreporter.write_line(f"summary written to {path}")
