"""Defenses against membership inference on encoders, and their utility cost.

A defense is written as a spec string, "name" or "name:param" (parse_defense).

Release-time defenses change what the encoder's API returns; the weights stay as trained.
A `ReleaseDefense` maps (N, K, D) view embeddings to the released ones:
- "normalize": every vector scaled to unit L2 norm. The L2 norm level is then the same for
  every sample, so any statistic of it (LpLA at p = 2: "view", "mean_spread") is at chance.
  Norms at p != 2 of unit vectors still vary with the vector's shape (its direction), so
  statistics at other p keep whatever the directions carry, and cosines between views
  (EncoderMI) do not change at all.
- "noise:<sigma>": adds Gaussian noise of per-coordinate std sigma * s / sqrt(D), s the
  encoder's typical L2 norm, so the noise vector's norm is about sigma times a typical
  embedding's. The noise is a fixed function of (seed, sample id, view index): asking the
  API again for the same view returns the same answer, so it cannot be averaged away.
- "quantize:<bits>": 2^bits levels per coordinate over one fixed range [lo, hi] per encoder
  (the smallest and largest coordinate seen at calibration); values outside are clipped. The
  whole release takes at most 2^bits distinct values.
- "quantize_vector:<bits>": each vector quantized on its own symmetric range [-m, m], m its
  largest |coordinate|, released with it (how vector stores keep embeddings): at most 2^bits
  values per vector; the scale m, and so most of the norm level, survives.
- "truncate:<d>": the first d dimensions. "truncate_random:<d>": a random subset of d
  dimensions fixed by the deployment's seed (kept in ascending order).

"noise" and "quantize" need the encoder's scale, measured once on data the API owner holds
(`ReleaseDefense.calibrated`); the study calibrates each encoder on its own reference-split
views. Applying a scale measured on the very set being released would let the scale itself
differ between members and non-members.

The attacker knows the defense: it is a property of the released API, documented like its
output format. So the attacker applies the same defense, with its own seed and its own
calibration, to its shadow and reference encoders' outputs (`defend_split_views` on each
encoder's views), and its calibration sees released-like statistics.

Training-time defenses (`TrainingDefense`) change how the encoder is trained: "epochs:<f>"
(a fraction f of the recipe's epochs: early stopping at a fixed point, since self-supervised
training has no labels to stop on), "weight_decay:<w>", "members:<m>" (train on m times as many
members; the study draws them) and "dp:<epsilon>" (DP-SGD to that epsilon, `encoders.dp`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..validation import as_views

# name -> (parameter kind, what the parameter means); kind None: takes no parameter.
RELEASE_DEFENSES: Dict[str, tuple] = {
    "normalize": (None, "unit L2 norm"),
    "noise": ("positive", "Gaussian noise, sigma relative to the typical L2 norm"),
    "quantize": ("bits", "bits per coordinate, one fixed range per encoder"),
    "quantize_vector": ("bits", "bits per coordinate, each vector on its own range"),
    "truncate": ("count", "the first d dimensions"),
    "truncate_random": ("count", "a seeded random subset of d dimensions"),
}
TRAINING_DEFENSES: Dict[str, tuple] = {
    "epochs": ("fraction", "fraction of the recipe's epochs"),
    "weight_decay": ("positive", "Adam weight decay"),
    "members": ("factor", "members multiplier"),
    "dp": ("positive", "DP-SGD target epsilon"),
}
MAX_BITS = 16


def _check_param(name: str, kind: Optional[str], param) -> Optional[float]:
    """The parameter as a number, or a ValueError that says what `name` expects."""
    if kind is None:
        if param is not None:
            raise ValueError(f"defense {name!r} takes no parameter, got {name}:{param}")
        return None
    example = {"positive": "0.1", "bits": "8", "count": "32", "fraction": "0.25", "factor": "2"}[kind]
    if param is None:
        raise ValueError(f"defense {name!r} needs a parameter, e.g. {name}:{example}")
    try:
        value = float(param)
    except (TypeError, ValueError):
        raise ValueError(f"defense {name!r}: parameter must be a number, got {param!r}") from None
    ok = {"positive": value > 0 and math.isfinite(value),
          "bits": value == int(value) and 1 <= value <= MAX_BITS,
          "count": value == int(value) and value >= 1,
          "fraction": 0 < value <= 1,
          "factor": value >= 1 and math.isfinite(value)}[kind]
    if not ok:
        expected = {"positive": "a finite number > 0", "bits": f"an integer in [1, {MAX_BITS}]",
                    "count": "an integer >= 1", "fraction": "a number in (0, 1]",
                    "factor": "a finite number >= 1"}[kind]
        raise ValueError(f"defense {name!r}: parameter must be {expected}, got {param!r}")
    return int(value) if kind in ("bits", "count") else value


def _split_spec(spec: str):
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a defense is a string 'name' or 'name:param', got {spec!r}")
    name, _, param = spec.strip().partition(":")
    return name.strip(), (param.strip() or None) if _ else None


def _spec(name: str, param) -> str:
    return name if param is None else f"{name}:{param:g}"


# --- release-time ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReleaseScale:
    """An encoder's scale, measured once on calibration views: the median L2 norm of its
    embeddings and the smallest and largest coordinate."""

    norm: float
    low: float
    high: float


def release_scale(views) -> ReleaseScale:
    """The ReleaseScale of (N, K, D) (or (N, D)) calibration embeddings."""
    v = as_views(views, "calibration views").double()
    return ReleaseScale(norm=float(torch.linalg.vector_norm(v, dim=-1).median()),
                        low=float(v.min()), high=float(v.max()))


class _DefenseSpec:
    """What both kinds of defense share: a name from `KINDS` with its checked parameter, the
    spec string that parse() reads back, and a label for reports."""

    KINDS: Dict[str, tuple] = {}  # name -> (parameter kind, description)
    LABELS: Dict[str, str] = {}  # name -> format string of the label
    WHAT = "defense"

    def __post_init__(self):
        if self.name not in self.KINDS:
            raise ValueError(f"unknown {self.WHAT} {self.name!r}; choose one of {', '.join(self.KINDS)}")
        object.__setattr__(self, "param", _check_param(self.name, self.KINDS[self.name][0], self.param))

    @classmethod
    def parse(cls, spec: str):
        return cls(*_split_spec(spec))

    @property
    def spec(self) -> str:
        """"name" or "name:param", what parse() reads back and results record."""
        return _spec(self.name, self.param)

    @property
    def label(self) -> str:
        return self.LABELS[self.name].format(self.param)


@dataclass(frozen=True)
class ReleaseDefense(_DefenseSpec):
    """A release-time defense (module docstring): `apply(views, seed, ids)` gives what the API
    releases. `scale` is the encoder's ReleaseScale ("noise" and "quantize" need it)."""

    name: str
    param: Optional[float] = None
    scale: Optional[ReleaseScale] = None

    KINDS = RELEASE_DEFENSES
    LABELS = {"normalize": "L2-normalized", "noise": "noise σ={:g}", "quantize": "{} bits",
              "quantize_vector": "{} bits/vector", "truncate": "first {} dims", "truncate_random": "{} random dims"}
    WHAT = "release defense"

    @property
    def needs_scale(self) -> bool:
        return self.name in ("noise", "quantize")

    def calibrated(self, views) -> "ReleaseDefense":
        """This defense with the scale of an encoder's calibration views (N, K, D)."""
        return replace(self, scale=release_scale(views))

    def apply(self, views, seed: int = 0, ids: Optional[Sequence[int]] = None) -> Tensor:
        """The released (N, K, D') float32 views of (N, K, D) (or (N, D)) embeddings.

        seed: the deployment's secret seed (noise, the random subset). ids: (N,) the samples'
        identities (e.g. dataset indices; default 0..N-1): the noise of view k of sample i is a
        function of (seed, ids[i], k) alone, so sets of one encoder should pass distinct ids.
        """
        v = as_views(views, "views").float()
        if self.needs_scale and self.scale is None:
            raise ValueError(f"defense {self.spec!r} needs the encoder's scale: use "
                             f"defense.calibrated(calibration_views) first")
        n, k, d = v.shape
        if self.name == "normalize":
            return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-12)
        if self.name == "noise":
            return v + float(self.param * self.scale.norm / math.sqrt(d)) * _noise(n, k, d, seed, ids)
        if self.name == "quantize":
            return _quantize(v, self.param, torch.tensor(self.scale.low), torch.tensor(self.scale.high))
        if self.name == "quantize_vector":
            m = v.abs().amax(dim=-1, keepdim=True)
            return _quantize(v, self.param, -m, m)
        if self.param > d:
            raise ValueError(f"defense {self.spec!r} keeps {self.param} dimensions but the embeddings have {d}")
        if self.name == "truncate":
            return v[..., :self.param].contiguous()
        keep = np.sort(np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x7E]).permutation(d)[:self.param])
        return v[..., torch.as_tensor(keep)].contiguous()


def _noise(n: int, k: int, d: int, seed: int, ids) -> Tensor:
    """(N, K, D) standard normal noise; row i from a generator seeded by (seed, ids[i]), filled
    view by view, so view k's noise does not depend on K."""
    ids = np.arange(n) if ids is None else np.asarray(ids).reshape(-1)
    if len(ids) != n or ids.dtype.kind not in "iu":
        raise ValueError(f"ids must be {n} integers (one per sample), got {len(ids)} of dtype {ids.dtype}")
    out = np.empty((n, k, d), np.float32)
    for i, sample in enumerate(ids.tolist()):
        out[i] = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(sample) & 0xFFFFFFFFFFFF]).standard_normal(
            (k, d), dtype=np.float32)
    return torch.from_numpy(out)


def _quantize(v: Tensor, bits: int, low: Tensor, high: Tensor) -> Tensor:
    """Mid-rise uniform quantizer: 2^bits cells on [low, high], each value sent to its cell's
    centre (values outside are clipped to the end cells)."""
    levels = 2 ** bits
    width = (high - low).clamp_min(1e-12) / levels
    cell = torch.floor((v - low) / width).clamp_(0, levels - 1)
    return low + (cell + 0.5) * width


def defend_split_views(views: Mapping[str, Mapping[str, Tensor]], defense: ReleaseDefense, splits,
                       seed: int, calibration_split: str = "reference") -> Dict[str, Dict[str, Tensor]]:
    """Apply a release defense to one encoder's {output: {split: (N, K, D)}} views (as
    `encoders.query_split_views` returns them): each output is calibrated on its
    `calibration_split` views, and the rows of split s are identified by `splits[s]` (their
    dataset indices), so a sample gets the same noise in every split of this encoder."""
    out: Dict[str, Dict[str, Tensor]] = {}
    for output, by_split in views.items():
        calibrated = defense
        if defense.needs_scale:
            if calibration_split not in by_split:
                raise ValueError(f"defense {defense.spec!r} calibrates on the {calibration_split!r} split, "
                                 f"which was not queried (have: {sorted(by_split)})")
            calibrated = defense.calibrated(by_split[calibration_split])
        out[output] = {s: calibrated.apply(v, seed, np.asarray(splits[s])) for s, v in by_split.items()}
    return out


def defended_quality(encoder, defense: ReleaseDefense, probe_train, probe_test, output: str = "backbone",
                     seed: int = 0, knn_k: int = 20) -> dict:
    """Linear-probe and kNN accuracy (as `encoders.feature_quality`) on the released, defended
    embeddings of the clean probe images: a release defense's utility cost.

    probe_train / probe_test: LabeledImages or (images, labels). An uncalibrated "noise" or
    "quantize" defense is calibrated on the probe train embeddings.
    """
    from ..encoders.quality import extract_features, probe_accuracy

    (x_train, y_train), (x_test, y_test) = _labelled(probe_train), _labelled(probe_test)
    f_train = torch.from_numpy(extract_features(encoder, x_train, output))
    f_test = torch.from_numpy(extract_features(encoder, x_test, output))
    if defense.needs_scale and defense.scale is None:
        defense = defense.calibrated(f_train)
    n = len(f_train)
    released_train = defense.apply(f_train, seed, np.arange(n))[:, 0].numpy()
    released_test = defense.apply(f_test, seed, np.arange(n, n + len(f_test)))[:, 0].numpy()
    return probe_accuracy(released_train, y_train, released_test, y_test, knn_k)


def _labelled(data):
    if hasattr(data, "images") and hasattr(data, "labels"):
        return data.images, np.asarray(data.labels)
    images, labels = data
    return images, np.asarray(labels)


# --- training-time --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingDefense(_DefenseSpec):
    """A training-time defense (module docstring). `train_config(config)` is the TrainConfig to
    train under it; `members_factor` how many times the recipe's members the study draws;
    `dp_epsilon` the DP-SGD target epsilon (train with `encoders.dp.train_encoder_dp`)."""

    name: str
    param: Optional[float] = None

    KINDS = TRAINING_DEFENSES
    LABELS = {"epochs": "{:g}× epochs", "weight_decay": "weight decay {:g}", "members": "{:g}× members",
              "dp": "DP-SGD ε={:g}"}
    WHAT = "training defense"

    @property
    def members_factor(self) -> float:
        return self.param if self.name == "members" else 1.0

    @property
    def dp_epsilon(self) -> Optional[float]:
        return self.param if self.name == "dp" else None

    def train_config(self, config):
        """The TrainConfig to train under this defense (a new object; `config` is unchanged)."""
        if self.name == "epochs":
            return replace(config, epochs=max(1, round(self.param * config.epochs)))
        if self.name == "weight_decay":
            return replace(config, weight_decay=self.param)
        if self.name == "dp":
            return replace(config, norm="group")  # per-sample gradients need no BatchNorm
        return replace(config)


Defense = Union[ReleaseDefense, TrainingDefense]


def parse_defense(spec: str) -> Defense:
    """A ReleaseDefense or TrainingDefense from its spec ("normalize", "noise:0.1",
    "quantize:4", "truncate:32", "epochs:0.25", "weight_decay:5e-4", "members:2", "dp:8")."""
    name, param = _split_spec(spec)
    if name in RELEASE_DEFENSES:
        return ReleaseDefense(name, param)
    if name in TRAINING_DEFENSES:
        return TrainingDefense(name, param)
    raise ValueError(f"unknown defense {name!r}; release-time: {', '.join(RELEASE_DEFENSES)}; "
                     f"training-time: {', '.join(TRAINING_DEFENSES)}")
