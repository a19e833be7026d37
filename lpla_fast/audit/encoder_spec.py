"""The audited encoder: parse `--encoder SPEC`, build it, load its weights, settle its
preprocessing and the recipe its reference encoders train with.

SPEC is a folder written by `lpla train` (its config is the recipe), or an external
architecture (`encoders.external`: timm:NAME, torchvision:NAME, python:module:factory) built
with random weights and loaded from `--weights` by `encoders.loading.load_model_weights`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from ..encoders.base import Encoder
from ..encoders.config import EXTERNAL, TrainConfig
from ..encoders.external import Preprocessing, is_external


@dataclass
class Target:
    """The audited encoder and what follows from its spec.

    encoder: an Encoder in eval mode (external models normalize inside their backbone).
    spec: the --encoder argument; architecture: the backbone name references are built from
        (a BACKBONES name or the external spec); label: the name in the report.
    preprocessing: input side, mean and std, and their source (recorded in the results).
    recipe: the TrainConfig of the target's own training (a `lpla train` folder), else None.
    """

    encoder: Encoder
    spec: str
    architecture: str
    label: str
    preprocessing: Preprocessing
    recipe: Optional[TrainConfig]

    @property
    def image_size(self) -> int:
        return int(self.preprocessing.image_size)

    @property
    def external(self) -> bool:
        return self.recipe is None


def _floats(values: Optional[Sequence[float]], name: str):
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    if len(values) not in (1, 3):
        raise ValueError(f"--{name} takes 1 or 3 values (one per channel), got {len(values)}")
    if name == "std" and any(not v > 0 for v in values):
        raise ValueError(f"--std values must be > 0, got {values}")
    return values * 3 if len(values) == 1 else values


def load_target(spec: str, weights: Optional[str] = None, output: str = "backbone", image_size: Optional[int] = None,
                mean=None, std=None, augmentation: Optional[str] = None, device: str = "cpu") -> Target:
    """Build the audited encoder from its spec (see the module docstring); every bad input is
    a ValueError with one line naming it."""
    from torch import nn

    from ..encoders import load_encoder

    mean, std = _floats(mean, "mean"), _floats(std, "std")
    if (mean is None) != (std is None):
        raise ValueError("--mean and --std go together")
    if image_size is not None and image_size < 1:
        raise ValueError(f"--image-size must be >= 1, got {image_size}")
    if os.path.isdir(spec):
        if weights:
            raise ValueError("--weights is for an external model (timm:, torchvision:, python:); a `lpla train` "
                             "folder holds its own weights")
        if mean is not None:
            raise ValueError("--mean/--std are for an external model; a `lpla train` encoder takes [0, 1] images")
        encoder = load_encoder(spec, device=device)
        recipe = encoder.config
        if recipe.framework == EXTERNAL:
            raise ValueError(f"{spec!r} holds an external encoder without a training recipe")
        if output == "head" and isinstance(encoder.head, nn.Identity):
            raise ValueError(f"{spec!r} has no projection head for --output head")
        if image_size is not None and image_size != recipe.image_size:
            raise ValueError(f"--image-size {image_size}: the encoder in {spec!r} was trained at {recipe.image_size}")
        pre = Preprocessing(recipe.image_size, None, None, f"the encoder's config.json ({spec})")
        if augmentation is not None:
            encoder.config = replace(encoder.config, augmentation=augmentation)
        return Target(encoder, spec, recipe.backbone, recipe.framework, pre, recipe)
    if not is_external(spec):
        if os.path.exists(spec):
            raise ValueError(f"--encoder {spec!r} is a file; give a `lpla train` folder or a spec "
                             "(timm:NAME, torchvision:NAME, python:module:factory)")
        raise ValueError(f"unknown encoder spec {spec!r}: not a folder, and not timm:NAME, torchvision:NAME or "
                         "python:package.module:factory")
    return _external_target(spec, weights, output, image_size, mean, std, augmentation or "natural", device)


def _external_target(spec, weights, output, image_size, mean, std, augmentation, device) -> Target:
    from ..encoders.backbones import infer_out_dim
    from ..encoders.external import ExternalBackbone, build_model, model_preprocessing, split_head
    from ..encoders.loading import load_model_weights

    model = build_model(spec)
    known = model_preprocessing(spec, model)
    head_prefixes = _head_prefixes(spec, model)
    if weights:
        # The classifier may be missing from a checkpoint of features only, unless it is released.
        load_model_weights(model, weights, optional=() if output == "head" else head_prefixes)
    features, head = split_head(spec, model)
    if output == "head" and head is None:
        raise ValueError(f"{spec} has no head (classifier) for --output head")
    size = image_size or known.image_size
    if size is None:
        raise ValueError(f"the input size of {spec} is not known to its library: pass --image-size")
    if mean is not None:
        pre = Preprocessing(size, mean, std, "the command line (--mean, --std)" +
                            ("" if image_size is None else " and --image-size"))
    else:
        pre = Preprocessing(size, known.mean, known.std,
                            known.source + ("; input size from --image-size" if image_size is not None else ""))
    backbone = ExternalBackbone(features, pre.mean, pre.std)
    config = TrainConfig(framework=EXTERNAL, backbone=spec, image_size=size, augmentation=augmentation,
                         dataset="unknown")
    encoder = Encoder(backbone, head if output == "head" else None, config, infer_out_dim(backbone, size))
    return Target(encoder.to(device).eval(), spec, spec, spec, pre, None)


def _head_prefixes(spec: str, model) -> tuple:
    """The state-dict keys of the model's head (they may be missing from a features checkpoint)."""
    import copy

    from ..encoders.external import split_head

    features, _ = split_head(spec, copy.deepcopy(model))
    return tuple(sorted(set(model.state_dict()) - set(features.state_dict())))


def reference_recipe(target: Target, recipe_file: Optional[str] = None, framework: Optional[str] = None,
                     epochs: Optional[int] = None, batch_size: Optional[int] = None, lr: Optional[float] = None,
                     augmentation: Optional[str] = None, device: str = "cpu") -> TrainConfig:
    """How reference encoders of the target's architecture train: the target's own config (a
    `lpla train` folder), or --recipe JSON (a TrainConfig as a JSON object), then the flags. The
    architecture is always the target's; a recipe naming another is refused."""
    if recipe_file:
        try:
            with open(recipe_file) as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"--recipe: no such file {recipe_file!r}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"--recipe {recipe_file!r} is not JSON: {exc}") from None
        doc = doc.get("config", doc) if isinstance(doc, dict) and doc.get("format") else doc
        if not isinstance(doc, dict):
            raise ValueError(f"--recipe {recipe_file!r} must hold a JSON object of TrainConfig fields")
        named = doc.get("backbone", target.architecture)
        if named != target.architecture or ("width" in doc and target.recipe and doc["width"] != target.recipe.width):
            raise ValueError(f"--recipe {recipe_file!r} is for architecture {named!r} (width {doc.get('width')}); "
                             f"the target is {target.architecture!r}")
        base = (target.recipe.to_dict() if target.recipe else {}) | doc
    elif target.recipe is not None:
        base = target.recipe.to_dict()
    else:
        base = {"framework": "simclr", "augmentation": "natural"}
    base.update(backbone=target.architecture, image_size=target.image_size, dataset="audit", device=device,
                amp=device.startswith("cuda"))
    if target.external:
        base["width"] = None
    for name, value in (("framework", framework), ("epochs", epochs), ("batch_size", batch_size), ("lr", lr),
                        ("augmentation", augmentation)):
        if value is not None:
            base[name] = value
    try:
        return TrainConfig.from_dict(base)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"reference recipe: {exc}") from None
