"""lpla_fast: membership-inference auditing of contrastive encoders.

Importing the package loads the compiled core (`lpla_fast._C`), which registers the
`torch.ops.lpla_fast` ops; there is no pure-Python fallback.
"""

import torch  # noqa: F401  (the compiled core links against torch's libraries)

try:
    from . import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "lpla_fast's compiled core (lpla_fast._C) could not be loaded: "
        f"{exc}. Build it from the source tree with "
        "`pip install --no-build-isolation -e .` (needs a C++ compiler; set CUDA_HOME "
        "to build the CUDA kernels too)."
    ) from exc

from . import ops  # noqa: E402,F401  (registers the fake kernels)
from .ops import (  # noqa: E402
    cpu_capability,
    lp_norm,
    lpla_score,
    pooled_lp_norm,
    pooled_lpla_score,
    view_cosine,
    view_norm_stats,
)

__version__ = "0.1.0"
__all__ = [
    "lp_norm",
    "pooled_lp_norm",
    "lpla_score",
    "pooled_lpla_score",
    "view_cosine",
    "view_norm_stats",
    "cpu_capability",
    "built_with_cuda",
    "__version__",
]


def built_with_cuda() -> bool:
    """Whether the compiled core holds CUDA kernels (a GPU is still needed to run them)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("lpla_fast::lp_norm", "CUDA")
