"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from lpla_fast import ops


@pytest.fixture(params=ops.supported_cpu_capabilities())
def cpu_capability(request):
    """Runs the test once per build of the CPU kernels that this CPU supports (baseline, avx2,
    avx512), that build chosen for the test's duration. CUDA cases run once, with the default."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("device") == "cuda" and request.param != ops.cpu_capability():
        pytest.skip("the CUDA kernels do not depend on the CPU build")
    previous = ops._set_cpu_capability(request.param)
    yield request.param
    ops._set_cpu_capability(previous)


@pytest.fixture
def job_plans(monkeypatch):
    """The plans of the scoring jobs run during the test, in order, kept to look at what a job
    did to its encoder after it ran."""
    from lpla_fast.streaming import job, local

    plans = []

    def keep_plan(*args, **kwargs):
        plans.append(job.plan_job(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(local, "plan_job", keep_plan)
    return plans
