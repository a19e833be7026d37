"""The local engine: one process, three stages running at once.

A reader thread takes chunk i+1 from the source (embeddings: page-faults the memory-mapped
rows in, or decodes the Parquet row groups, and on CUDA copies them into a pinned host
buffer; images: receives the views that worker processes decoded and drew) while the main
thread scores chunk i (the encoder's forward pass, the fused op) and a writer thread commits
chunk i-1 (part file, then manifest). Queues of depth one bound memory to a few chunks
whatever the number of rows.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
from typing import Dict, Optional

import numpy as np

from .config import CHUNK_DELAY_ENV, ScoreConfig
from .job import JobPlan, finish_job, plan_job
from .scorer import views_tensor
from .shards import Chunk, ShardError

_DONE = object()


class _Stop(Exception):
    pass


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
    raise _Stop


class _PinnedPool:
    """Pinned host buffers reused across chunks, so host-to-device copies can be asynchronous."""

    def __init__(self, n: int):
        self.free: queue.Queue = queue.Queue()
        self.n = n

    def get(self, nbytes: int, stop: threading.Event):
        import torch

        if self.n > 0:
            self.n -= 1
            return torch.empty(nbytes, dtype=torch.uint8).pin_memory()
        while not stop.is_set():
            try:
                buf = self.free.get(timeout=0.1)
            except queue.Empty:
                continue
            return buf if buf.numel() >= nbytes else torch.empty(nbytes, dtype=torch.uint8).pin_memory()
        raise _Stop


def _reader(plan: JobPlan, pending, out: queue.Queue, stop: threading.Event, pool,
            halt: Optional[threading.Event] = None) -> None:
    """Put the chunks of `pending` on `out`, then _DONE; `halt` set: stop after the chunk in hand."""
    try:
        for shard, chunk in plan.source.stream(pending):
            staged = None
            # Embedding rows (numpy) are staged in a pinned buffer; image views come pinned.
            if pool is not None and isinstance(chunk, Chunk) and isinstance(chunk.views, np.ndarray):
                views = views_tensor(chunk)
                buf = pool.get(views.numel() * views.element_size(), stop)
                staged = buf[: views.numel() * views.element_size()].view(views.dtype).view(views.shape)
                staged.copy_(views)
                staged = (staged, buf)
            _put(out, (shard, chunk, staged), stop)
            if halt is not None and halt.is_set():
                break
        _put(out, _DONE, stop)
        # Alive to the job's end: its OpenMP team (views drawing) keeps the forward pass's
        # threads waiting passively up to the last chunk (see `tuning`).
        stop.wait()
    except _Stop:
        pass
    except BaseException as exc:  # surfaced by the main thread
        try:
            _put(out, exc, stop)
        except _Stop:
            pass


def _start_reader(plan: JobPlan, pending, out: queue.Queue, stop: threading.Event, pool=None, halt=None) -> None:
    threading.Thread(target=_reader, args=(plan, pending, out, stop, pool, halt), daemon=True,
                     name="lpla-reader").start()


def _writer(plan: JobPlan, inbox: queue.Queue, errors: list) -> None:
    while True:
        item = inbox.get()
        if item is _DONE:
            try:  # list what was committed, even when the job stops on an error
                plan.manifest.save_if_unsaved()
            except BaseException as exc:
                if not errors:
                    errors.append(exc)
            return
        if errors:
            continue  # a failed commit stops all later ones; drain
        try:
            kind, *rest = item
            if kind == "part":
                plan.commit(*rest)
            else:
                plan.record_bad(*rest)
        except BaseException as exc:
            errors.append(exc)


def _progress(plan: JobPlan):
    from tqdm import tqdm

    pending = plan.pending()
    rows = sum(b - a for _, chunks in pending for a, b in chunks)
    unit = "images" if plan.config.images is not None else "rows"
    return tqdm(total=rows, unit=unit, unit_scale=True, disable=not plan.config.progress, desc="lpla score")


def run_local(config: ScoreConfig) -> Dict[str, object]:
    """Run a scoring job in this process; resumes what the manifest in config.out lists."""
    cuda = config.device != "cpu"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {config.device}: CUDA is not available on this machine")
    plan = plan_job(config, config.device)
    delay = float(os.environ.get(CHUNK_DELAY_ENV, "0") or 0)
    stop = threading.Event()
    chunks: queue.Queue = queue.Queue(maxsize=1)
    commits: queue.Queue = queue.Queue(maxsize=2)
    write_errors: list = []
    pool = _PinnedPool(3) if cuda else None
    bar = _progress(plan)
    threads_before = torch_threads()
    writer = threading.Thread(target=_writer, args=(plan, commits, write_errors), daemon=True, name="lpla-writer")
    writer.start()
    t0, nbytes, bad, threads = time.perf_counter(), 0, set(), None
    try:
        if config.images is not None:
            items, threads = _tune(plan, plan.pending(), chunks, stop, bar)
        else:
            _start_reader(plan, plan.pending(), chunks, stop, pool)
            items = _queued(chunks)
        for shard, chunk, staged in items:
            if shard.path in bad:
                if pool is not None and staged is not None:
                    pool.free.put(staged[1])
                continue
            if isinstance(chunk, ShardError):
                _bad_shard(plan, shard.path, chunk, commits, bad)
                continue
            try:
                scored = staged if isinstance(staged, _Scored) else _score(plan, chunk, staged, pool, config.device)
                table, embeddings = scored  # scored while tuning, or now
            except ShardError as exc:
                _bad_shard(plan, shard.path, exc, commits, bad)
                continue
            if hasattr(shard, "release"):
                shard.release(chunk.start, chunk.stop)
            commits.put(("part", chunk, table, embeddings))
            if write_errors:
                raise write_errors[0]
            bar.update(chunk.stop - chunk.start)
            if config.images is None:  # the bar's own rate is images/s for images
                nbytes += chunk.nbytes
                bar.set_postfix_str(f"{nbytes / 1e9 / max(time.perf_counter() - t0, 1e-9):.3g} GB/s", refresh=False)
            if delay:
                time.sleep(delay)
    finally:
        stop.set()
        commits.put(_DONE)
        writer.join()
        bar.close()
        set_torch_threads(threads_before)
    if write_errors:
        raise write_errors[0]
    summary = finish_job(plan)
    if threads is not None:
        summary["threads"] = threads.describe()
    return summary


def _tune(plan: JobPlan, pending, chunks: queue.Queue, stop: threading.Event, bar):
    """Start an image job's pipeline with the thread settings `tuning.choose_threads` picks from
    the costs of its first chunk, measured in the running pipeline; returns (the job's chunks as
    (shard, chunk or ShardError, _Scored or None), the ThreadPlan).

    The first chunk is decoded on one thread (as in a worker process), timed; then the reader
    thread starts on the other chunks, and the first chunk's forward pass is timed while the
    reader decodes the next ones. Light decoding: the reader thread goes on. Heavy: it stops
    after the chunk in hand, the chunks it delivered are scored here, and worker processes
    stream the rest; every chunk once. The forward pass is timed beside the reader's decoding
    and includes the layers' first-call set-up: both err toward "decoding is light".
    Nothing to measure (--workers given, CUDA, one core): the settings are applied up front.
    """
    from .tuning import available_cores, choose_threads, user_set_threads

    config, source = plan.config, plan.source
    cores, keep = available_cores(), user_set_threads()
    if config.workers is not None or config.device != "cpu" or cores == 1:
        threads = _apply(choose_threads(cores, config.device, None, None, config.workers, keep), plan, bar)
        if threads.workers:  # worker processes read ahead: their DataLoader is iterated here
            return ((shard, chunk, None) for shard, chunk in source.stream(pending)), threads
        _start_reader(plan, pending, chunks, stop)
        return _queued(chunks), threads
    first = [(shard, c) for shard, chunks_ in pending for c in chunks_][:1]
    probed, decode, forward = [], None, None
    for shard, (start, end) in first:
        if not keep:
            set_torch_threads(1)  # as in a worker process
        t = time.perf_counter()
        try:
            chunk = source.load(shard, start, end)
            decode = (time.perf_counter() - t) / (end - start)
        except ShardError as exc:
            chunk = exc
        if not keep:
            set_torch_threads(cores)
        probed.append((shard, chunk, None))
    rest = _left(pending, probed)
    halt = threading.Event()
    source.workers = 0
    _start_reader(plan, rest, chunks, stop, halt=halt)
    for i, (shard, chunk, _) in enumerate(probed):
        if isinstance(chunk, Chunk):
            t = time.perf_counter()
            try:
                probed[i] = (shard, chunk, _Scored(plan.scorer.score_chunk(chunk, config.device)))
                forward = (time.perf_counter() - t) / (chunk.stop - chunk.start)
            except ShardError as exc:  # NaN rows: the shard is bad, as in the main loop
                probed[i] = (shard, exc, None)
    threads = choose_threads(cores, config.device, forward, decode, None, keep)
    if not threads.workers:
        _apply(threads, plan, bar)
        return itertools.chain(probed, _queued(chunks)), threads
    halt.set()
    delivered = list(_queued(chunks))  # what the reader read before it stopped
    _apply(threads, plan, bar)
    streamed = ((shard, chunk, None) for shard, chunk in source.stream(_left(rest, delivered)))
    return itertools.chain(probed, delivered, streamed), threads


def _apply(threads, plan: JobPlan, bar):
    """Set a ThreadPlan (torch's threads, the source's worker processes); its stage line."""
    if threads.torch_threads is not None:
        set_torch_threads(threads.torch_threads)
    plan.source.workers, plan.source.pin_memory = threads.workers, threads.pin_memory
    if plan.config.progress:
        bar.write(f"[lpla score] threads: {threads.describe()}", file=sys.stderr)
    return threads


def _left(pending, items):
    """`pending` without the chunks of `items` ((shard, chunk or ShardError, ...)) and without
    the rest of a shard that one of them found bad."""
    done = {(shard.path, chunk.start) for shard, chunk, *_ in items if isinstance(chunk, Chunk)}
    bad = {shard.path for shard, chunk, *_ in items if isinstance(chunk, ShardError)}
    left = []
    for shard, chunks in pending:
        if shard.path in bad:
            continue
        chunks = [c for c in chunks if (shard.path, c[0]) not in done]
        if chunks:
            left.append((shard, chunks))
    return left


class _Scored(tuple):
    """A chunk's (table, embeddings), scored while tuning."""


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def set_torch_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _queued(chunks: queue.Queue):
    """The reader thread's items, until it is done; its error is raised here."""
    while True:
        item = chunks.get()
        if item is _DONE:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _score(plan: JobPlan, chunk, staged, pool, device: str):
    """(table, embeddings) of a chunk; embedding rows staged in a pinned buffer on CUDA."""
    if staged is None:
        return plan.scorer.score_chunk(chunk, device)
    import torch

    views, buf = staged
    try:
        gpu = views.to(device, non_blocking=True)
        norms, scores = plan.scorer.scores(gpu)
        norms, scores = norms.cpu(), scores.cpu()  # synchronizes: the buffer is free again
    except BaseException:
        torch.cuda.synchronize(device)  # the copy from buf may still be running
        raise
    finally:
        pool.free.put(buf)
    return plan.scorer.finish(chunk, norms, scores), None


def _bad_shard(plan: JobPlan, shard: str, exc: ShardError, commits: queue.Queue, bad: set) -> None:
    if not plan.config.skip_bad_shards:
        raise exc
    bad.add(shard)
    commits.put(("bad", shard, exc.problem))
