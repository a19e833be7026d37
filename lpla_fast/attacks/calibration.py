"""The fitted LpLA calibration: what `lpla attack` saves and `lpla score` applies.

A versioned JSON file. The member (`in`) and non-member (`out`) Gaussians are stored in
standardized units of the statistic, t = (stat - ref_mean) / ref_std, where stat is
||z||_p (or log ||z||_p) and (ref_mean, ref_std) are the *target* encoder's statistics on
reference non-members; that is how a calibration fitted on a shadow encoder transfers to a
target with another norm scale. Without standardization ref_mean = 0 and ref_std = 1.

Because t is an affine function of stat, the log-likelihood ratio in t equals the one in
stat with the Gaussians mapped back (mean -> ref_mean + ref_std * mean, std -> ref_std * std),
so scoring is one pass of the fused `lpla_score` op.

`aggregation` says how a sample's K views combine: "sum" (the default; the op's score,
sum_k of the per-view log-likelihood ratio) or "mean" (the log-likelihood ratio of the
view-mean statistic, whose Gaussians were fitted on view means; the op still computes
the norms in its one pass, and the ratio of their mean is taken here).

`characteristic` other than "view" ("mean_spread", "resultant", "multi_p", "joint": see
`lpla_fast.attacks.lpla`) models a per-sample vector with full-covariance Gaussians,
stored in `gaussians` in standardized units, with the target's reference moments per
coordinate in `ref_center` / `ref_scale`; the scalar fields then describe nothing and
keep their neutral values. Version 2 added these fields, version 3 the "joint"
characteristic (whose vector has more values with K >= 2 views than with one:
`statistics.characteristic_columns`); files of versions 1 and 2 still load and score as before.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import ops
from ..fileio import decode_float, encode_float, write_json
from ..reference import gaussian_log_ratio
from . import gaussian
from .statistics import norm_characteristic

SCHEMA = "lpla_fast.lpla_calibration"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
AGGREGATIONS = ("sum", "mean")
CHARACTERISTICS = ("view", "mean_spread", "resultant", "multi_p", "joint")


@dataclass(frozen=True)
class LpLACalibration:
    p: float
    log_space: bool
    mean_in: float
    std_in: float
    mean_out: float
    std_out: float
    ref_mean: float = 0.0
    ref_std: float = 1.0
    dim: Optional[int] = None
    meta: dict = field(default_factory=dict)
    aggregation: str = "sum"
    characteristic: str = "view"
    gaussians: Optional[dict] = None
    ref_center: Optional[tuple] = None
    ref_scale: Optional[tuple] = None

    def __post_init__(self):
        if self.characteristic not in CHARACTERISTICS:
            raise ValueError(f"calibration characteristic must be one of {CHARACTERISTICS}, got {self.characteristic!r}")
        if self.characteristic != "view":
            self._check_vector_fields()
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"calibration aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if math.isnan(self.p) or self.p <= 0:
            raise ValueError(f"calibration p must be in (0, inf], got p={self.p}")
        for name in ("mean_in", "mean_out", "ref_mean"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"calibration {name} must be finite, got {getattr(self, name)}")
        for name in ("std_in", "std_out", "ref_std"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"calibration {name} must be finite and > 0, got {value}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"calibration dim must be >= 1, got {self.dim}")

    def _check_vector_fields(self) -> None:
        g = self.gaussians
        if not isinstance(g, dict) or set(g) != {"mean_in", "cov_in", "mean_out", "cov_out"}:
            raise ValueError(f"characteristic {self.characteristic!r} needs gaussians with mean_in, cov_in, "
                             f"mean_out and cov_out")
        v = len(g["mean_in"])
        shapes_ok = all(len(g[k]) == v for k in ("mean_out", "cov_in", "cov_out")) and \
            all(len(row) == v for k in ("cov_in", "cov_out") for row in g[k])
        if not shapes_ok or len(self.ref_center or ()) != v or len(self.ref_scale or ()) != v:
            raise ValueError(f"calibration gaussians / ref_center / ref_scale disagree on the vector size {v}")
        values = [x for k in ("mean_in", "mean_out") for x in g[k]] + list(self.ref_center) + list(self.ref_scale)
        values += [x for k in ("cov_in", "cov_out") for row in g[k] for x in row]
        if not all(math.isfinite(x) for x in values) or min(self.ref_scale) <= 0:
            raise ValueError("calibration gaussians and reference moments must be finite, with ref_scale > 0")

    def kernel_params(self) -> Tuple[float, float, float, float]:
        """(mean_in, std_in, mean_out, std_out) of the raw statistic, for `ops.lpla_score`."""
        return (
            self.ref_mean + self.ref_std * self.mean_in,
            self.ref_std * self.std_in,
            self.ref_mean + self.ref_std * self.mean_out,
            self.ref_std * self.std_out,
        )

    def check_dim(self, d: int, where: str = "embeddings") -> None:
        if self.dim is not None and d != self.dim:
            raise ValueError(f"{where} have D={d}, but the calibration was fitted on D={self.dim}")

    def score(self, views: Tensor) -> Tuple[Tensor, Tensor]:
        """Per-view norms (N, K) and LpLA scores (N,) of views (N, K, D): through the fused op for
        the per-view characteristic, else the characteristic's vector under its Gaussians."""
        self.check_dim(views.shape[-1], "views")
        if self.characteristic != "view":
            return self._score_vector(views)
        norms, scores = ops.lpla_score(views, self.p, *self.kernel_params(), log_space=self.log_space)
        if self.aggregation == "mean":
            stat = torch.log(norms.double()) if self.log_space else norms.double()
            scores = gaussian_log_ratio(stat.mean(dim=-1), *self.kernel_params()).to(scores.dtype)
        return norms, scores

    def _score_vector(self, views: Tensor) -> Tuple[Tensor, Tensor]:
        values = norm_characteristic(views, self.characteristic, self.p, self.log_space)
        size = len(self.ref_center)
        if values.shape[1] != size:
            raise ValueError(f"the calibration's {self.characteristic!r} characteristic has {size} values per sample, "
                             f"but views with K={views.shape[1]} give {values.shape[1]}: score with the query "
                             f"budget it was fitted at (K >= 2 or K = 1)")
        t = (values - np.asarray(self.ref_center)) / np.asarray(self.ref_scale)
        g = {k: np.asarray(v, np.float64) for k, v in self.gaussians.items()}
        scores = gaussian.log_ratio(t, g["mean_in"], g["cov_in"], g["mean_out"], g["cov_out"])
        dtype = torch.float64 if views.dtype == torch.float64 else torch.float32
        return ops.lp_norm(views, self.p), torch.from_numpy(scores).to(dtype)

    # --- JSON ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["p"] = encode_float(self.p)
        for name in ("ref_center", "ref_scale"):
            d[name] = None if d[name] is None else list(d[name])
        return {"schema": SCHEMA, "version": VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "LpLACalibration":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ValueError(f"not an LpLA calibration (expected schema {SCHEMA!r}, got {d.get('schema') if isinstance(d, dict) else type(d).__name__!r})")
        if d.get("version") not in READABLE_VERSIONS:
            raise ValueError(f"unsupported LpLA calibration version {d.get('version')!r}; this build reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
        required = ("p", "log_space", "mean_in", "std_in", "mean_out", "std_out")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"LpLA calibration is missing fields: {', '.join(missing)}")
        try:
            return cls(
                p=decode_float(d["p"]),
                log_space=bool(d["log_space"]),
                mean_in=float(d["mean_in"]),
                std_in=float(d["std_in"]),
                mean_out=float(d["mean_out"]),
                std_out=float(d["std_out"]),
                ref_mean=float(d.get("ref_mean", 0.0)),
                ref_std=float(d.get("ref_std", 1.0)),
                dim=None if d.get("dim") is None else int(d["dim"]),
                meta=dict(d.get("meta") or {}),
                aggregation=str(d.get("aggregation", "sum")),
                characteristic=str(d.get("characteristic", "view")),
                gaussians=d.get("gaussians"),
                ref_center=None if d.get("ref_center") is None else tuple(float(x) for x in d["ref_center"]),
                ref_scale=None if d.get("ref_scale") is None else tuple(float(x) for x in d["ref_scale"]),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid LpLA calibration: {exc}") from exc

    def save(self, path) -> None:
        """Write atomically (temporary file in the same folder, then rename)."""
        write_json(os.fspath(path), self.to_dict(), indent=2)

    @classmethod
    def load(cls, path) -> "LpLACalibration":
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"calibration file {path} is not valid JSON: {exc}") from exc
        return cls.from_dict(d)
