"""Architectures from other libraries, named by a spec string, usable as backbones here.

Specs: ``timm:NAME`` (built with timm, ``pretrained=False``), ``torchvision:NAME`` (built with
``weights=None``) and ``python:package.module:factory`` (a callable returning an ``nn.Module``).
Nothing is ever downloaded: the models are built with random weights (load yours with
`loading.load_model_weights`), and the Hugging Face hub is set offline before timm is imported.

The released representation of such a model is its pooled feature vector: timm's
``forward_features`` + the model's own pooling (``reset_classifier(0)``); torchvision's model
without its classifier (``fc``, ``classifier``, ``heads`` or ``head`` set to ``nn.Identity``);
a python factory's module as it is (or its ``.backbone``). `split_head` returns the classifier
(or ``.head`` / ``.projection_head``) beside it, for ``output="head"``.

Preprocessing (input size, mean, std) comes from the library where it knows the model: timm's
``resolve_data_config`` (the pretrained_cfg, read without download), torchvision's default
weights' transforms (their metadata, not the weights). `ExternalBackbone` normalizes its
[0, 1] input with that mean and std, so that views, training and queries all work in [0, 1].
"""

from __future__ import annotations

import importlib
import os
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import torch
from torch import nn

PREFIXES = ("timm:", "torchvision:", "python:")
_TORCHVISION_HEADS = ("fc", "classifier", "heads", "head")


def is_external(name) -> bool:
    """Whether `name` is an external architecture spec (timm:, torchvision:, python:)."""
    return isinstance(name, str) and name.startswith(PREFIXES)


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects: its input side and the per-channel mean and std applied to [0, 1]
    images (None: no normalization), and where they came from."""

    image_size: Optional[int]
    mean: Optional[Tuple[float, ...]]
    std: Optional[Tuple[float, ...]]
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


def check_spec(spec: str) -> None:
    """A one-line error for a malformed or unknown spec, before anything is built."""
    kind, _, name = spec.partition(":")
    if kind == "timm":
        timm = _timm()
        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r} (timm {timm.__version__}; see timm.list_models())")
    elif kind == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision model {name!r} (see torchvision.models.list_models())")
    elif kind == "python":
        module, _, factory = name.rpartition(":")
        if not module or not factory:
            raise ValueError(f"a python encoder spec is python:package.module:factory, got {spec!r}")
        try:
            owner = importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"cannot import {module!r} for encoder spec {spec!r}: {exc}") from exc
        if not callable(getattr(owner, factory, None)):
            raise ValueError(f"{module!r} has no callable {factory!r} (encoder spec {spec!r})")
    else:
        raise ValueError(f"unknown encoder spec {spec!r}: give a `lpla train` folder, timm:NAME, torchvision:NAME "
                         f"or python:package.module:factory")


def build_model(spec: str) -> nn.Module:
    """The whole model of `spec` (with its classifier), freshly initialised, never downloaded."""
    check_spec(spec)
    kind, _, name = spec.partition(":")
    if kind == "timm":
        return _timm().create_model(name, pretrained=False)
    if kind == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    module, _, factory = name.rpartition(":")
    model = getattr(importlib.import_module(module), factory)()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def split_head(spec: str, model: nn.Module) -> Tuple[nn.Module, Optional[nn.Module]]:
    """(features, head): the model without its head (image -> pooled features) and the head
    (None when the model has none). Modifies `model` in place."""
    kind = spec.partition(":")[0]
    if kind == "timm":
        head = model.get_classifier()
        head = None if isinstance(head, nn.Identity) else head
        model.reset_classifier(0)  # keeps the model's own pooling (and pre-logits norm)
        return model, head
    if kind == "torchvision":
        for attr in _TORCHVISION_HEADS:
            head = getattr(model, attr, None)
            if isinstance(head, nn.Module):
                setattr(model, attr, nn.Identity())
                return model, head
        return model, None
    if isinstance(getattr(model, "backbone", None), nn.Module):
        head = next((getattr(model, a) for a in ("head", "projection_head")
                     if isinstance(getattr(model, a, None), nn.Module)), None)
        return model.backbone, head
    return model, None


def model_preprocessing(spec: str, model: nn.Module) -> Preprocessing:
    """The library's preprocessing for `spec` (timm: resolve_data_config; torchvision: the
    default weights' transforms); none known for a python factory."""
    kind, _, name = spec.partition(":")
    if kind == "timm":
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        return Preprocessing(int(cfg["input_size"][-1]), tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"])),
                             "timm resolve_data_config (the model's pretrained_cfg)")
    if kind == "torchvision":
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, KeyError, AttributeError):
            return Preprocessing(None, None, None, "none (torchvision knows no weights for this model)")
        t = weights.transforms()
        return Preprocessing(int(t.crop_size[0]), tuple(map(float, t.mean)), tuple(map(float, t.std)),
                             "torchvision default weights' transforms (metadata only)")
    return Preprocessing(None, None, None, "none (a python factory declares no preprocessing)")


class ExternalBackbone(nn.Module):
    """[0, 1] images (B, C, H, W) -> normalized -> `features` -> (B, D) flattened features."""

    def __init__(self, features: nn.Module, mean=None, std=None):
        super().__init__()
        self.features = features
        normalize = mean is not None and std is not None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) if normalize else None,
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) if normalize else None,
                             persistent=False)

    def forward(self, x):
        if self.mean is not None:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.features(x).flatten(1)


def make_external_backbone(spec: str, image_size: int) -> ExternalBackbone:
    """A fresh backbone of `spec` with the library's normalization: what reference encoders of an
    external target train (`make_backbone` builds it for a TrainConfig whose backbone is a spec)."""
    model = build_model(spec)
    pre = model_preprocessing(spec, model)
    features, _ = split_head(spec, model)
    return ExternalBackbone(features, pre.mean, pre.std)


def _timm():
    # Never reach the network: models are built with pretrained=False, and the hub stays offline.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import timm
    except ImportError as exc:
        raise ValueError("timm:NAME encoders need timm: pip install 'lpla_fast[timm]'") from exc
    return timm
