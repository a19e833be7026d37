"""Train many encoders at once, in worker processes of one torch thread each.

A study trains dozens of small encoders. On a CPU one small encoder does not keep two threads
busy: on a 2-core machine one digits SimCLR encoder (width 32, 300 epochs) took 41 s at two
threads, while at one thread it used 55 s of CPU time, so two encoders side by side, one thread
each, finish two in about the time of 1.35 at two threads. On CUDA, encoders train one after
another in this process (one device, no gain from processes).

Every encoder is trained by `train_encoder` into its own checkpoint folder, so a job that was
interrupted resumes where it stopped, and a finished one is only loaded.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Callable, List, Optional, Union

import torch
from torch import Tensor

from .checkpoint import load_encoder
from .config import TrainConfig
from .pixels import CacheRows
from .jobs import epochs_done, train_to_folder
from .training import resolve_device


ENGINES = ("local", "ray")


@dataclass
class TrainJob:
    """One encoder to train: its members, its config and its checkpoint folder; with
    `dp_epsilon`, trained by DP-SGD to that epsilon (`encoders.dp`, no intermediate checkpoints).

    images: the members as a float tensor, or as `CacheRows` (rows of an image cache): a job
    sent to a worker process then carries the cache's folder and row numbers, not pixels, and
    the worker reads the rows from the memory-mapped file.
    """

    images: Union[Tensor, CacheRows]
    config: TrainConfig
    folder: str
    name: str = ""
    dp_epsilon: Optional[float] = None


def default_workers(configs: List[TrainConfig]) -> int:
    """One process per core for CPU training; in-process (1) when any job trains on a GPU."""
    if any(resolve_device(c.device).type != "cpu" for c in configs):
        return 1
    return max(1, min(len(configs), os.cpu_count() or 1))


def train_encoders(jobs: List[TrainJob], workers: Optional[int] = None, progress: bool = True,
                   say: Optional[Callable[[str], None]] = None, engine: str = "local",
                   address: Optional[str] = None, gpus_per_job: Optional[float] = None) -> List[tuple]:
    """Train (or reuse) every job's encoder; returns [(encoder, info)] in the order of `jobs`.

    workers: processes; None picks `default_workers`. 1 trains in this process, with its
        threads and a progress bar per encoder. With engine "ray": CPUs per task (default 1).
    say: called with one line per finished encoder (the study's stage log).
    engine: "local" (this machine) or "ray" (one Ray task per encoder, see `ray_training`; the
        checkpoint folders on a file system every node sees); address: the Ray cluster;
        gpus_per_job: GPUs per task for CUDA jobs on Ray (a fraction packs small encoders).
    info: {"seconds", "epochs", "epochs_reused", "reused", "final_loss", "privacy"} (privacy: what
        the DP-SGD accountant spent, `dp.train_encoder_dp`'s `privacy_`; None without DP-SGD).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    before = [min(epochs_done(j.folder), j.config.epochs) for j in jobs]
    if engine == "ray":
        from .ray_training import train_on_ray

        pending = [i for i, (j, b) in enumerate(zip(jobs, before))
                   if b < j.config.epochs or not os.path.isfile(os.path.join(j.folder, "config.json"))]
        seconds = train_on_ray(jobs, pending, address, cpus_per_job=workers or 1, gpus_per_job=gpus_per_job,
                               on_done=lambda i, s: _tell(say, jobs[i], s, before[i]))
        for i in set(range(len(jobs))) - set(pending):
            _tell(say, jobs[i], 0.0, before[i])
        return _loaded(jobs, seconds, before)
    workers = default_workers([j.config for j in jobs]) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    seconds = [0.0] * len(jobs)
    if workers == 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            seconds[i] = train_to_folder(job.images, job.config.to_dict(), job.folder, job.dp_epsilon, progress)
            _tell(say, job, seconds[i], before[i])
    else:
        _train_in_workers(jobs, workers, seconds, before, say, progress)
    return _loaded(jobs, seconds, before)


def _loaded(jobs, seconds, before) -> List[tuple]:
    results = []
    for job, secs, done_before in zip(jobs, seconds, before):
        encoder = load_encoder(job.folder, device=resolve_device(job.config.device))
        results.append((encoder, {"seconds": round(secs, 3), "epochs": job.config.epochs,
                                  "epochs_reused": done_before, "reused": done_before >= job.config.epochs,
                                  "final_loss": encoder.history_[-1] if encoder.history_ else None,
                                  "privacy": encoder.privacy_}))
    return results


def _train_in_workers(jobs, workers, seconds, before, say, progress) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=f"training ({workers} processes)", unit="encoder",
               disable=not progress)
    # spawn, not fork: the parent already runs torch's thread pools, which fork would break.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        pending = {pool.submit(train_to_folder, job.images, job.config.to_dict(), job.folder, job.dp_epsilon): i
                   for i, job in enumerate(jobs)}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                i = pending.pop(future)
                seconds[i] = future.result()  # re-raises a worker's error here
                bar.update(1)
                _tell(say, jobs[i], seconds[i], before[i])
    bar.close()


def _tell(say, job: TrainJob, seconds: float, done_before: int) -> None:
    if say is None:
        return
    what = "reused" if done_before >= job.config.epochs else f"trained in {seconds:.0f} s"
    say(f"{job.name or job.folder}: {job.config.framework}/{job.config.backbone} "
        f"({job.config.epochs} epochs, {len(job.images)} members) {what}")
