"""Thread settings of an image job, chosen from the machine and the job's own measured costs.

An image job has two kinds of work per image: decoding and drawing its views (one thread,
in worker processes or a reader thread) and the encoder's forward pass (torch's intra-op
threads). On a CPU both compete for the same cores. `choose_threads` splits the cores
between them from the cores this process may use (`available_cores`: its affinity, capped
by a cgroup CPU quota) and the per-image costs the job measured on its first chunk:

* decoding light next to the forward pass (per image, no more than the forward pass on every
  core: one reader thread keeps up with it): a reader thread of this process decodes ahead and
  the forward pass takes every core. This is also the wait
  policy: OpenMP (GNU libgomp, torch's) reads ``OMP_WAIT_POLICY`` once, when torch loads, and
  has no call to change it later; by default a thread that waits for the next parallel region
  spins for 300,000 turns, which on a busy machine steals the cores its partners need (the
  forward pass alone ran 3-5x slower with 2 threads than with 1 on this project's shared 2-core
  machine). libgomp's documented exception (``GOMP_SPINCOUNT``): with more OpenMP threads than
  CPUs it spins 100 turns, then sleeps, as with ``OMP_WAIT_POLICY=PASSIVE``. The reader thread's
  own views drawing runs an OpenMP team, so while the job runs the process has more OpenMP
  threads than cores and the forward pass's threads wait passively;
* decoding heavy (one thread cannot keep up): worker processes get cores of their own (at
  least one core left to the forward pass), as many as balance the two, when that is two or
  more; one decoder either way stays the reader thread, which leaves the forward pass every
  core and takes only the time it needs (on a 2-core machine, small CNN, 64 x 64 PNG/JPEG tars,
  the reader thread against one worker process beside a one-thread forward pass: 1.57x at
  decoding 22 % of the forward pass, 1.31x at 97-145 %);
* one core: a reader thread (a worker process could only take turns with the forward pass);
* CUDA: the forward pass needs little of the CPU; decoders get every core but one, and the
  views arrive in pinned memory.

What the user set wins: ``--workers`` fixes the worker count, and ``OMP_NUM_THREADS`` (or
``MKL_NUM_THREADS``) in the environment leaves torch's thread count alone.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
LIGHT_DECODING = 1.0  # decoding per image, as a fraction of the forward pass, still "light"


@dataclass(frozen=True)
class ThreadPlan:
    """torch_threads: intra-op threads of the forward pass (None: leave torch's setting);
    workers: decoding processes (0: a reader thread in this process); pin_memory: views
    arrive in pinned memory; reason: one line saying why."""

    torch_threads: Optional[int]
    workers: int
    pin_memory: bool
    reason: str

    def describe(self) -> str:
        n = self.torch_threads
        threads = "torch's threads as set" if n is None else f"{n} thread{'s' if n != 1 else ''}"
        decoders = f"{self.workers} worker process{'es' if self.workers != 1 else ''}" if self.workers else "a reader thread"
        pinned = ", pinned memory" if self.pin_memory else ""
        return f"forward pass on {threads}, decoding in {decoders}{pinned}: {self.reason}"


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota if one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    return max(1, cores)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> Optional[float]:
    """CPUs' worth of time the cgroup quota allows (cgroup v2 ``cpu.max``, or v1's CFS quota
    and period), None when there is no quota."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def user_set_threads(environ=None) -> bool:
    """Whether the environment fixes torch's thread count (then the job keeps it)."""
    environ = os.environ if environ is None else environ
    return any(environ.get(name) for name in THREAD_ENV)


def choose_threads(cores: int, device: str = "cpu", forward_s: Optional[float] = None,
                   decode_s: Optional[float] = None, workers: Optional[int] = None,
                   keep_threads: bool = False) -> ThreadPlan:
    """The thread settings of an image job.

    Args:
        cores: cores the job may use (`available_cores`).
        device: "cpu" or "cuda[:i]".
        forward_s: seconds of the forward pass (and scoring) per image on `cores` threads,
            measured on the first chunk; None when unknown.
        decode_s: seconds of decoding and view drawing per image on one thread; None when
            unknown.
        workers: the user's --workers (None: choose).
        keep_threads: the user fixed torch's thread count (OMP_NUM_THREADS): keep it.
    Returns:
        a `ThreadPlan`.
    """
    cores = max(1, int(cores))
    cuda = device != "cpu"
    threads = None if keep_threads else (1 if cuda else cores)
    if workers is not None:
        return ThreadPlan(threads, workers, cuda, f"--workers {workers} as given, {cores} cores")
    if cuda:
        n = max(1, cores - 1)
        return ThreadPlan(threads, n, True, f"the forward pass runs on the GPU; {cores} cores, one left to feed it")
    if cores == 1:
        return ThreadPlan(threads, 0, False, "1 core: a worker process could only take turns with the forward pass")
    if forward_s is None or decode_s is None:
        return ThreadPlan(threads, 0, False, f"{cores} cores, costs not measured")
    share = decode_s / max(forward_s, 1e-12)
    costs = f"decoding {_ms(decode_s)} per image against a forward pass of {_ms(forward_s)} on {cores} cores"
    if share <= LIGHT_DECODING:
        return ThreadPlan(threads, 0, False, f"{costs} ({share:.0%}): decoding is light, the forward pass takes every "
                                             "core and its OpenMP threads wait passively beside the reader's")
    # Heavy decoding: decoders get whole cores, enough to keep up with what the forward pass
    # does on the rest, and the forward pass keeps at least one.
    n = _decoders(cores, forward_s, decode_s)
    if n == 1:
        return ThreadPlan(threads, 0, False, f"{costs} ({share:.0%}): decoding is heavy, but one decoder balances it: "
                                             "a reader thread, and the forward pass keeps every core")
    forward_threads = None if keep_threads else cores - n
    return ThreadPlan(forward_threads, n, False,
                      f"{costs} ({share:.0%}): decoding is heavy, {n} of {cores} cores decode")


def _decoders(cores: int, forward_s: float, decode_s: float) -> int:
    """Decoding processes that balance the job: n decoders deliver n / decode_s images per
    second, the forward pass on the other cores about (cores - n) / (cores * forward_s)."""
    best, best_rate = 1, 0.0
    for n in range(1, cores):
        rate = min(n / decode_s, (cores - n) / (cores * forward_s))
        if rate > best_rate:
            best, best_rate = n, rate
    return best


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"
