"""`lpla audit` end to end, stage by stage, and reference training locally against Ray.

    python bench/bench_audit.py [OUT_JSON]          # or: pytest bench/bench_audit.py --benchmark-only -s

1. Breakdown: a digits SimCLR target (width 32, LPLA_BENCH_AUDIT_TARGET_EPOCHS epochs, default
   20) audited on its 200 members and 200 non-members exported as PNG folders, with the reference
   split as population, K = 8, `--train-references R` (LPLA_BENCH_AUDIT_R, default 4) of
   LPLA_BENCH_AUDIT_EPOCHS epochs (default 20) each, 200 bootstrap replicates; the seconds of each
   stage (target, cache, queries, references, attacks, report) as results.json records them.
2. References per hour: the same R reference jobs (half of the 400 candidates each) trained by
   `train_encoders` with the local engine (one process of one thread per core) and with the Ray
   engine on a local Ray cluster of the same cores (one task of one CPU per reference), each into
   fresh folders; Ray's start (ray.init) is timed apart from the training.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np


def _env(name, default):
    return int(os.environ.get(name, default))


def run(out_json=None) -> dict:
    import torch

    from lpla_fast.audit import AuditConfig, run_audit
    from lpla_fast.cli import main
    from lpla_fast.encoders.parallel import TrainJob, train_encoders

    R, epochs = _env("LPLA_BENCH_AUDIT_R", 4), _env("LPLA_BENCH_AUDIT_EPOCHS", 20)
    target_epochs = _env("LPLA_BENCH_AUDIT_TARGET_EPOCHS", 20)
    root = tempfile.mkdtemp(prefix="lpla-bench-audit-")
    result = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "R": R, "epochs": epochs,
              "load_average_start": list(os.getloadavg())}
    t0 = time.perf_counter()
    assert main(["train", "--dataset", "digits", "--epochs", str(target_epochs), "--out", f"{root}/target",
                 "--no-progress"]) == 0
    result["target_train_seconds"] = round(time.perf_counter() - t0, 2)
    assert main(["export-images", "--splits", f"{root}/target/splits.json", "--out", f"{root}/images",
                 "--no-progress"]) == 0
    config = AuditConfig(encoder=f"{root}/target", members=f"{root}/images/members",
                         nonmembers=f"{root}/images/nonmembers", population=f"{root}/images/reference",
                         out=f"{root}/audit", train_references=R, epochs=epochs, k=8, n_bootstrap=200)
    t0 = time.perf_counter()
    results = run_audit(config, progress=False)
    result["audit_seconds"] = round(time.perf_counter() - t0, 2)
    result["audit_stages"] = results.timings["stages"]
    recipe = results.config["audit"]["references"]["recipe"]
    print(f"audit end to end: {result['audit_seconds']} s; stages: {result['audit_stages']}", flush=True)

    # 2. the same reference jobs, local engine against Ray, on fresh folders
    from lpla_fast.attacks import draw_reference_masks
    from lpla_fast.audit.references import reference_seed
    from lpla_fast.encoders import TrainConfig
    from lpla_fast.streaming.cache import open_image_cache

    members = open_image_cache(f"{root}/audit/cache/members").images
    nonmembers = open_image_cache(f"{root}/audit/cache/nonmembers").images
    candidates = np.concatenate([np.asarray(members), np.asarray(nonmembers)])
    masks = draw_reference_masks(len(candidates), R, 0)

    def jobs(folder):
        return [TrainJob(candidates[masks[r]], TrainConfig.from_dict(dict(recipe, seed=reference_seed(0, r))),
                         f"{root}/{folder}/r{r}", name=f"r{r}") for r in range(R)]

    t0 = time.perf_counter()
    train_encoders(jobs("local"), progress=False)
    local = time.perf_counter() - t0
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="lrb", dir="/tmp"))
    ray_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_encoders(jobs("ray"), engine="ray", progress=False)
    on_ray = time.perf_counter() - t0
    ray.shutdown()
    result.update(local_seconds=round(local, 2), ray_seconds=round(on_ray, 2), ray_init_seconds=round(ray_start, 2),
                  local_references_per_hour=round(R * 3600 / local, 1),
                  ray_references_per_hour=round(R * 3600 / on_ray, 1),
                  ray_overhead_seconds=round(on_ray - local, 2), load_average_end=list(os.getloadavg()))
    print(json.dumps(result, indent=1), flush=True)
    if out_json:
        with open(out_json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def test_audit_breakdown_and_reference_engines(benchmark):
    benchmark.pedantic(run, args=(os.environ.get("LPLA_BENCH_AUDIT_JSON"),), rounds=1, iterations=1)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else None)
