"""Memory of the audit's data path: build the image cache, train a small encoder from it, query
views of every image; peak memory must not grow with the number of images.

    python bench/bench_audit_memory.py          # plainly
    pytest bench/bench_audit_memory.py --benchmark-only -s

For each number of images (LPLA_BENCH_AUDIT_SIZES, default 2000 and 20000) a WebDataset tar of
synthetic 64x64 RGB PNGs is written, then a fresh Python process (so that nothing of an earlier
size counts) runs the three stages and reports each stage's own peak resident memory (the peaks
are reset between stages through /proc/self/clear_refs): VmHWM
(everything resident, the memory map's pages and torch's libraries included) and the peak of
RssAnon (private memory, sampled every 5 ms). Each size runs twice: with glibc's default malloc,
whose dynamic mmap threshold keeps freed large blocks (torch's activations) in the heap, so that
the heap's peak creeps up with the number of forward passes, and with that threshold fixed
(MALLOC_MMAP_THRESHOLD_=1048576), which shows the memory of the data path alone. The stages:

* cache: `build_image_cache` (decode every PNG, write the uint8 (N, 3, 64, 64) cache);
* train: `train_encoder` on TRAIN_STEPS x 128 rows spread evenly over the whole cache
  (`CacheRows`), one epoch of a width-8 small CNN at batch 128 (TRAIN_STEPS steps);
* views: `query_views` of every image of the cache, K = 1 (the (N, K, D) result is 128 bytes
  per image at D = 32: the output, not a copy of the images).

A float copy of 20,000 64x64x3 images would be 983 MB, the uint8 cache is 246 MB: a path that held
either would show it at 20,000 images.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

S = 64
TRAIN_STEPS = 8
ALLOCATORS = {"default malloc": {}, "fixed mmap threshold": {"MALLOC_MMAP_THRESHOLD_": "1048576"}}
SIZES = tuple(int(n) for n in os.environ.get("LPLA_BENCH_AUDIT_SIZES", "2000,20000").split(","))

_STAGES = r"""
import json, os, re, sys, threading, time
import numpy as np, torch

peak_anon = [0]
def field(name):
    return int(re.search(name + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
def sample():
    while True:
        peak_anon[0] = max(peak_anon[0], field("RssAnon"))
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()

from lpla_fast.encoders import CacheRows, TrainConfig, query_views, train_encoder
from lpla_fast.streaming.cache import build_image_cache

source, folder, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
report = {"start": {"vmhwm_mb": field("VmHWM"), "anon_mb": field("RssAnon")}}
def stage(name, t0):
    time.sleep(0.02)  # one more sample
    report[name] = {"vmhwm_mb": field("VmHWM"), "peak_anon_mb": peak_anon[0], "seconds": time.perf_counter() - t0}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM restarts from the current RSS
    peak_anon[0] = 0

t0 = time.perf_counter()
cache = build_image_cache(source, folder, 64, progress=False)
stage("cache", t0)
members = np.linspace(0, len(cache) - 1, steps * 128).astype(np.int64)
t0 = time.perf_counter()
encoder = train_encoder(CacheRows(folder, members), TrainConfig(width=8, image_size=64, epochs=1, batch_size=128,
                        device="cpu", augmentation="natural"), progress=False)
stage("train", t0)
t0 = time.perf_counter()
views = query_views(encoder, CacheRows(folder, np.arange(len(cache))), K=1, batch_size=512)
stage("views", t0)
report["n"], report["views_shape"] = len(cache), list(views.shape)
print(json.dumps(report))
"""


def write_source(path: str, n: int, seed: int = 0) -> None:
    """A tar of n synthetic PNGs (smooth colour gradients plus noise), written 500 at a time."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, S, dtype=np.float32)
    with tarfile.open(path, "w") as tar:
        for start in range(0, n, 500):
            m = min(500, n - start)
            colour = rng.random((m, 1, 1, 3), dtype=np.float32)
            base = colour * ramp[None, :, None, None] + (1 - colour) * ramp[None, None, :, None]
            images = np.clip(base * 200 + rng.normal(0, 20, (m, S, S, 3)), 0, 255).astype(np.uint8)
            for i, image in enumerate(images):
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="PNG")
                info = tarfile.TarInfo(f"img{start + i:06d}.png")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)


def measure(source: str, cache: str, allocator: dict) -> dict:
    """The report of the stages, run in a fresh process on `source` (a new cache each time)."""
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""), **allocator)
    result = subprocess.run([sys.executable, "-c", _STAGES, source, cache, str(TRAIN_STEPS)],
                            capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_all(workdir: str) -> dict:
    """{allocator: {n: report}}."""
    results = {name: {} for name in ALLOCATORS}
    for n in SIZES:
        source = os.path.join(workdir, f"src-{n}.tar")
        write_source(source, n)
        for name, allocator in ALLOCATORS.items():
            results[name][n] = measure(source, os.path.join(workdir, f"cache-{n}"), allocator)
    return results


def describe(results: dict) -> str:
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
             "| malloc | images | stage | peak RSS (VmHWM) MB | peak private (RssAnon) MB | seconds |",
             "|---|---:|---|---:|---:|---:|"]
    for allocator, reports in results.items():
        for n, report in reports.items():
            for name in ("cache", "train", "views"):
                r = report[name]
                lines.append(f"| {allocator} | {n} | {name} | {r['vmhwm_mb']:.0f} | {r['peak_anon_mb']:.0f} | "
                             f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def check_flat(results: dict) -> None:
    """Flat with the allocator's own growth taken out: within 10 % + 30 MB at 10x the images."""
    reports = results["fixed mmap threshold"]
    small, large = reports[min(reports)], reports[max(reports)]
    for key in ("vmhwm_mb", "peak_anon_mb"):
        assert large["views"][key] < small["views"][key] * 1.1 + 30, f"{key} grows with the number of images"


def test_audit_memory_is_flat(benchmark, tmp_path):
    results = benchmark.pedantic(run_all, args=(str(tmp_path),), rounds=1)
    benchmark.extra_info.update({f"{a} {n}": r for a, reports in results.items() for n, r in reports.items()})
    print("\n" + describe(results))
    check_flat(results)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="lpla-audit-memory-") as tmp:
        started = time.perf_counter()
        results = run_all(tmp)
        print(describe(results))
        print(f"({time.perf_counter() - started:.0f} s in all)")
        check_flat(results)
