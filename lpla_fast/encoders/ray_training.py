"""The Ray engine of `parallel.train_encoders`: one Ray task per encoder, on a cluster.

Each task trains one TrainJob into its checkpoint folder (which must be on a file system every
node sees) with `jobs.train_to_folder`, exactly as the local engine does; only its seconds come
back. Resources: `num_gpus` per task when the job trains on CUDA (a fraction packs several
small encoders on one GPU), else `num_cpus` (torch then uses that many threads).

Faults: a task whose worker process or node dies is retried (`max_retries`, Ray's retry of
system failures); an OSError raised by the task (a shared file system's hiccup) is retried too
(`retry_exceptions`). A retried task resumes from the encoder's last checkpoint, and the
encoder is seeded by its config, so it is the same encoder (exactly, on a CPU). A finished
encoder (all epochs in its folder) is never submitted again.
"""

from __future__ import annotations

from typing import Callable, List, Optional

MAX_RETRIES = 3
RETRY_EXCEPTIONS = [OSError]


def _train_task(images, config: dict, folder: str, dp_epsilon, threads: int) -> float:
    import torch

    from .jobs import train_to_folder

    torch.set_num_threads(max(1, int(threads)))
    return train_to_folder(images, config, folder, dp_epsilon)


def train_on_ray(jobs: list, pending: List[int], address: Optional[str] = None, cpus_per_job: float = 1,
                 gpus_per_job: Optional[float] = None, on_done: Optional[Callable[[int, float], None]] = None,
                 max_retries: int = MAX_RETRIES) -> List[float]:
    """Train jobs[i] for every i in `pending` as Ray tasks; returns each job's seconds (0 for
    those not pending). address: the cluster ("auto", "ray://...", None: the one this process
    is connected to, or a new local one). gpus_per_job: GPUs per task when the jobs train on
    CUDA (default 1). on_done(i, seconds) is called as each finishes."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    seconds = [0.0] * len(jobs)
    futures = {}
    task = ray.remote(_train_task)
    for i in pending:
        job = jobs[i]
        cuda = str(job.config.device).startswith("cuda")  # the driver may have no GPU: not resolved here
        options = dict(max_retries=max_retries, retry_exceptions=RETRY_EXCEPTIONS, num_cpus=cpus_per_job)
        if cuda:
            options.update(num_gpus=1 if gpus_per_job is None else gpus_per_job, num_cpus=1)
        future = task.options(**options).remote(job.images, job.config.to_dict(), job.folder, job.dp_epsilon,
                                                max(1, int(cpus_per_job)))
        futures[future] = i
    while futures:
        done, _ = ray.wait(list(futures), num_returns=1)
        for future in done:
            i = futures.pop(future)
            seconds[i] = float(ray.get(future))  # re-raises the task's error once retries are spent
            if on_done is not None:
                on_done(i, seconds[i])
    return seconds
