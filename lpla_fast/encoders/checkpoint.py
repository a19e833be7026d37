"""Encoder files: a folder with `config.json` (TrainConfig and training progress) and
`model.safetensors` (the state dict). Training checkpoints add `training_state.pt` (optimizer
and generator state, plain tensors and numbers, read back with weights_only=True). Nothing is
ever unpickled."""

from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.overrides import TorchFunctionMode

from ..fileio import replace_atomically, write_json
from .backbones import BACKBONES, infer_out_dim, make_backbone
from .base import Encoder
from .config import EXTERNAL, TrainConfig

FORMAT = "lpla_fast.encoder/1"
CONFIG_FILE, MODEL_FILE, STATE_FILE = "config.json", "model.safetensors", "training_state.pt"


def save_encoder(encoder: Encoder, path: str, epochs_done: int | None = None) -> None:
    """Write the encoder to folder `path` (created if needed), each file atomically."""
    from .external import is_external

    if encoder.config.backbone not in BACKBONES and not is_external(encoder.config.backbone):
        raise ValueError(
            f"only encoders on a named backbone ({', '.join(BACKBONES)}) can be saved; this one has "
            f"{encoder.config.backbone!r}. Save its state_dict yourself and reload with load_pretrained"
        )
    os.makedirs(path, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in encoder.state_dict().items()}
    replace_atomically(os.path.join(path, MODEL_FILE), lambda tmp: save_file(tensors, tmp))
    doc = {
        "format": FORMAT,
        "config": encoder.config.to_dict(),
        "epochs_done": len(encoder.history_) if epochs_done is None else int(epochs_done),
        "history": [float(x) for x in encoder.history_],
        "has_head": not isinstance(encoder.head, torch.nn.Identity),
    }
    if getattr(encoder, "privacy_", None) is not None:  # DP-SGD: what the accountant spent
        doc["privacy"] = encoder.privacy_
    write_json(os.path.join(path, CONFIG_FILE), doc, allow_nan=True)  # a diverged loss is still recorded


def load_encoder(path: str, device="cpu") -> Encoder:
    """Read an encoder folder written by save_encoder or train_encoder, in eval mode."""
    doc = read_config(path)
    config = TrainConfig.from_dict(doc["config"])
    with _SkipParameterInit():  # every parameter is replaced by the state dict below
        encoder = _empty_encoder(config, doc.get("has_head", True))
    state = _read_tensors(os.path.join(path, MODEL_FILE))
    try:
        # assign: the tensors just read become the parameters, no copy (unless parameters are tied)
        encoder.load_state_dict(state, strict=True, assign=not _tied_parameters(encoder))
    except RuntimeError as exc:
        raise ValueError(f"{os.path.join(path, MODEL_FILE)!r} does not match its config.json: {exc}") from exc
    encoder.history_ = list(doc.get("history", []))
    encoder.privacy_ = doc.get("privacy")
    return encoder.to(device).eval()


def read_config(path: str) -> dict:
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"no encoder at {path!r}: {CONFIG_FILE} is missing")
    try:
        with open(config_path) as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"checkpoint file {config_path!r} is corrupt: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{config_path!r} is not an lpla_fast encoder config (expected format {FORMAT!r})")
    return doc


def save_training_state(path: str, state: dict) -> None:
    replace_atomically(os.path.join(path, STATE_FILE), lambda tmp: torch.save(state, tmp))


def load_training_state(path: str) -> dict | None:
    state_path = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_path):
        return None
    try:
        return torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ValueError(f"checkpoint file {state_path!r} is corrupt or not a training state: {exc}") from exc


def _empty_encoder(config: TrainConfig, has_head: bool) -> Encoder:
    from .frameworks import build_encoder

    if config.framework != EXTERNAL:
        return build_encoder(config)
    backbone = make_backbone(config.backbone, config.width, config.image_size)
    return Encoder(backbone, None, config, infer_out_dim(backbone, config.image_size))


class _SkipParameterInit(TorchFunctionMode):
    """Leaves out the random initialisers (torch.nn.init's, `Tensor.normal_`, `uniform_`) on the
    parameters of a model being built, in this thread: a ResNet-18 spends most of its loading
    time drawing 11M random weights that its state dict then replaces. Buffers and everything else
    run as usual (a non-persistent buffer is not in the state dict)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        if getattr(func, "__name__", None) in _RANDOM_INIT and isinstance(target, nn.Parameter):
            return target
        return func(*args, **kwargs)


_RANDOM_INIT = {"normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
                "trunc_normal_", "orthogonal_"}


def _tied_parameters(module: nn.Module) -> bool:
    """Whether one parameter sits at two places (loading by assignment would untie it)."""
    return len(list(module.named_parameters(remove_duplicate=False))) != len(list(module.parameters()))


def _read_tensors(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"checkpoint file {path!r} is corrupt or truncated: {exc}") from exc

