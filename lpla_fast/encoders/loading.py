"""Users' own encoders, wrapped as an Encoder so that query_views and the attacks can use them.

`load_pretrained(source, backbone=..., image_size=...)` accepts:

* an ``nn.Module``: used as the backbone as is (if it has a ``.backbone`` attribute, as
  lightly's and solo-learn's model classes do, that sub-module is taken instead);
* a path to a ``.safetensors`` file, or a ``torch.save``'d checkpoint read with
  ``weights_only=True`` (a pickled whole module is refused unless ``trust_pickle=True``,
  because unpickling runs arbitrary code);
* a state dict (mapping of names to tensors).

How the backbone's weights are found in a state dict or checkpoint:

1. Nesting: while the object is a dict with a ``"state_dict"`` (Lightning, solo-learn),
   ``"model"`` or ``"module"`` entry holding a dict, descend into it.
2. Keys are stripped of a leading ``"module."`` (DataParallel / DDP) and ``"model."``.
3. If any key starts with ``"backbone."`` (lightly and solo-learn) or ``"encoder."``, only those
   keys are kept, with the prefix removed. Momentum copies (``"backbone_momentum."``,
   ``"momentum_backbone."``) never match, since the prefix includes the dot.
4. Otherwise every key is kept except those of heads: prefixes ``"fc."``, ``"head."``,
   ``"heads."``, ``"classifier."``, ``"projector."``, ``"projection_head."``,
   ``"prediction_head."``, ``"predictor."`` and any key containing ``"momentum"``.
5. The remaining keys are loaded into the backbone named by ``backbone`` (one of
   ``BACKBONES``, e.g. "resnet18" with the CIFAR stem, whose names match torchvision's) or into
   the ``nn.Module`` given as ``backbone``; missing keys are an error, unexpected ones are listed
   in the error too.

The returned Encoder has no projection head (``output="head"`` gives the backbone output).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from .backbones import BACKBONES, infer_out_dim, make_backbone
from .base import Encoder
from .config import EXTERNAL, TrainConfig

_NESTING_KEYS = ("state_dict", "model", "module")
_STRIP_PREFIXES = ("module.", "model.")
_BACKBONE_PREFIXES = ("backbone.", "encoder.")
_HEAD_PREFIXES = ("fc.", "head.", "heads.", "classifier.", "projector.", "projection_head.",
                  "prediction_head.", "predictor.")


def load_pretrained(source, backbone: str | nn.Module | None = None, image_size: int = 32,
                    width: int | None = None, augmentation: str = "natural",
                    trust_pickle: bool = False) -> Encoder:
    """Wrap a user's encoder (module, checkpoint path or state dict) as an Encoder in eval mode.

    Args:
        source: nn.Module, path to a checkpoint file, or a state dict (see the module docstring).
        backbone: architecture to load a state dict into: a name in BACKBONES or an nn.Module.
        image_size: input side the encoder expects (recorded in its config; used to probe the
            embedding size).
        width: width of a named backbone (None: its default).
        augmentation: the view policy query_views uses by default for this encoder.
        trust_pickle: allow a checkpoint holding a pickled nn.Module (runs code from the file).
    """
    if isinstance(source, (str, os.PathLike)):
        source = _read_checkpoint(os.fspath(source), trust_pickle)
    if isinstance(source, nn.Module):
        module = source.backbone if isinstance(getattr(source, "backbone", None), nn.Module) else source
        name = backbone if isinstance(backbone, str) else type(module).__name__
    elif isinstance(source, Mapping):
        module, name = _module_for(backbone, width, image_size)
        _load_backbone_weights(module, backbone_state_dict(source))
    else:
        raise TypeError(f"source must be an nn.Module, a state dict or a checkpoint path, got {type(source).__name__}")
    config = TrainConfig(framework=EXTERNAL, backbone=name, width=width, image_size=image_size,
                         augmentation=augmentation, dataset="unknown")
    device = next(module.parameters(), torch.empty(0)).device
    return Encoder(module, None, config, infer_out_dim(module, image_size)).to(device).eval()


def backbone_state_dict(checkpoint: Mapping) -> dict:
    """The backbone's tensors out of a (possibly nested) checkpoint; rules in the module docstring."""
    tensors, picked = model_state_dict(checkpoint)
    if picked:
        return tensors
    return {k: v for k, v in tensors.items() if not _is_head_key(k)}


def model_state_dict(checkpoint: Mapping):
    """(tensors, picked): rules 1 to 3 of the module docstring, without dropping heads (rule 4);
    picked is True when a backbone prefix (rule 3) selected the keys."""
    state = checkpoint
    while True:
        inner = next((state[k] for k in _NESTING_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    tensors = {_strip(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError("the checkpoint holds no tensors (looked inside 'state_dict', 'model', 'module')")
    for prefix in _BACKBONE_PREFIXES:
        picked = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if picked:
            return picked, True
    return tensors, False


def _is_head_key(key: str) -> bool:
    return key.startswith(_HEAD_PREFIXES) or "momentum" in key


def load_model_weights(model: nn.Module, source, optional: tuple = (), trust_pickle: bool = False) -> None:
    """Load a checkpoint (path or state dict; nesting and prefixes as in the module docstring)
    into a whole model, e.g. a timm or torchvision one with its classifier.

    optional: key prefixes of `model` that may be missing (its classifier, when only the pooled
    features are released). Keys of heads and momentum copies in the checkpoint (rule 4) that
    the model lacks are ignored. Anything else missing or unexpected is an error naming the keys.
    """
    if isinstance(source, (str, os.PathLike)):
        source = _read_checkpoint(os.fspath(source), trust_pickle)
    if not isinstance(source, Mapping):
        raise ValueError(f"the weights must be a state dict, got {type(source).__name__}")
    tensors, _ = model_state_dict(source)
    own = model.state_dict()
    tensors = {k: v for k, v in tensors.items() if k in own or not _is_head_key(k)}
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in tensors.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in tensors and not k.startswith(tuple(optional))]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (first: {missing[:5]})" if missing else "",
                 f"{len(unexpected)} unexpected (first: {unexpected[:5]})" if unexpected else "",
                 f"{len(wrong)} of another shape (first: {wrong[:3]})" if wrong else ""]
        raise ValueError(f"the weights do not fit the architecture: {'; '.join(p for p in parts if p)} keys")
    model.load_state_dict(tensors, strict=False)


def _strip(key: str) -> str:
    for prefix in _STRIP_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _module_for(backbone, width, image_size):
    if isinstance(backbone, nn.Module):
        return backbone, type(backbone).__name__
    if backbone is None:
        raise ValueError(f"loading a state dict needs backbone=: one of {', '.join(BACKBONES)} or an nn.Module")
    return make_backbone(backbone, width, image_size), backbone


def _load_backbone_weights(module: nn.Module, state: dict) -> None:
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(
            f"the checkpoint does not fit the backbone: {len(result.missing_keys)} weights missing "
            f"(first: {result.missing_keys[:5]}); unexpected keys: {result.unexpected_keys[:5]}"
        )


def _read_checkpoint(path: str, trust_pickle: bool):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as exc:
            raise ValueError(f"checkpoint file {path!r} is corrupt or truncated: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not trust_pickle:
            raise ValueError(
                f"cannot read {path!r} as tensors only (weights_only=True): {exc}. If it is a pickled "
                "nn.Module from a source you trust, pass trust_pickle=True"
            ) from exc
    return torch.load(path, map_location="cpu", weights_only=False)
