"""DP-SGD training of encoders with Opacus (Poisson sampling, per-sample clipping, Gaussian
noise, the privacy accountant's epsilon).

DP-SGD bounds one sample's influence by clipping *its* gradient. That is the gradient of its
own term of the loss only when the batch loss is a sum of per-sample terms, each depending on
that sample alone (given the weights). Two things break this:

- BatchNorm: each output depends on the batch's statistics, so on every other sample. Hence
  config.norm must be "group" (every BatchNorm of backbone and heads is a GroupNorm).
- The framework's loss. BYOL and SimSiam (with GroupNorm) decompose: sample i's term
  compares the online prediction of one of its views with the target projection of its other
  view, and the target side carries no gradient (BYOL's momentum branch is an average of
  past released weights, SimSiam's a stop-gradient). SimCLR (NT-Xent: the batch's other
  samples are the negatives), Barlow Twins (the cross-correlation is standardized over the
  batch) and MoCo (the queue holds other samples' keys, computed from their images, reused as
  negatives for many later steps, and saved with the model) do not: what Opacus computes for
  sample i is the gradient through i's own forward pass, but it depends on the other samples,
  and sample j moves every other sample's clipped gradient. The clipping then bounds nothing
  and the reported epsilon is not a guarantee. These frameworks are refused unless
  `dp_unsafe_ok=True` (then a warning, and privacy_["guarantee"] is False: clipping and noise
  still act as a regularizer, whose empirical leakage the study can measure).

The privacy unit is one training image (both of its augmented views belong to it). Backbone:
the small CNN; the ResNets and the ViT are refused (UNSUPPORTED_BACKBONES says why).
"""

from __future__ import annotations

import itertools
import math
import warnings

import torch
from torch import Tensor

from ..augment import augment
from .base import Encoder
from .config import TrainConfig
from .frameworks import build_encoder
from .training import _batch_count, _check_images, resolve_device

DP_MAX_GRAD_NORM = 1.0  # the default per-sample clipping bound (the study's "dp" training defense uses it)

PER_SAMPLE_FRAMEWORKS = ("byol", "simsiam")
UNSUPPORTED_BACKBONES = {
    "resnet18": "torchvision's residual blocks add in place, which Opacus's backward hooks forbid",
    "resnet50": "torchvision's residual blocks add in place, which Opacus's backward hooks forbid",
    "vit_small": "Opacus has no per-sample gradient rule for nn.MultiheadAttention",
}
COUPLED_FRAMEWORKS = {
    "simclr": "NT-Xent uses the batch's other samples as negatives",
    "moco": "the queue of negatives holds other samples' keys (and is saved with the model)",
    "barlowtwins": "the cross-correlation is standardized over the batch",
}


def check_dp_config(config: TrainConfig, dp_unsafe_ok: bool = False) -> bool:
    """Whether DP-SGD on this config gives a guarantee; raises ValueError where it cannot run
    or (coupled losses, without dp_unsafe_ok) where its epsilon would mean nothing."""
    if config.norm != "group":
        raise ValueError("DP-SGD needs per-sample gradients, which BatchNorm's batch statistics couple; "
                         "train with TrainConfig(norm='group')")
    if config.framework in PER_SAMPLE_FRAMEWORKS:
        return True
    if config.framework not in COUPLED_FRAMEWORKS:
        raise ValueError(f"DP-SGD cannot train framework {config.framework!r}")
    message = (f"{config.framework}'s loss couples the samples of a batch ({COUPLED_FRAMEWORKS[config.framework]}): "
               "per-sample clipping does not bound one sample's influence, so the epsilon is no guarantee. "
               f"DP-SGD gives a guarantee for {' and '.join(PER_SAMPLE_FRAMEWORKS)}")
    if not dp_unsafe_ok:
        raise ValueError(message + "; pass dp_unsafe_ok=True to train anyway")
    warnings.warn(message, stacklevel=3)
    return False


def build_dp_encoder(config: TrainConfig) -> Encoder:
    """A fresh encoder (see `build_encoder`) that Opacus can take per-sample gradients of:
    in-place activations off (Opacus's backward hooks forbid them; the weights are the same),
    and Opacus's module check passed (a ValueError names what it cannot handle)."""
    from opacus.validators import ModuleValidator

    if config.backbone in UNSUPPORTED_BACKBONES:
        raise ValueError(f"DP-SGD cannot train backbone {config.backbone!r}: {UNSUPPORTED_BACKBONES[config.backbone]}; "
                         "use backbone='small_cnn'")
    encoder = build_encoder(config)
    for module in encoder.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    errors = ModuleValidator.validate(encoder, strict=False)
    if errors:
        raise ValueError(f"Opacus cannot compute per-sample gradients for backbone {config.backbone!r}: "
                         + "; ".join(str(e) for e in errors[:3]))
    return encoder


def train_encoder_dp(images: Tensor, config: TrainConfig, *, noise_multiplier: float | None = None,
                     target_epsilon: float | None = None, max_grad_norm: float = DP_MAX_GRAD_NORM,
                     delta: float | None = None,
                     accountant: str = "rdp", dp_unsafe_ok: bool = False, progress: bool = False) -> Encoder:
    """Train an encoder with DP-SGD and return it in eval mode, like `train_encoder`.

    Args:
        images: (N, 3, H, W) float tensor in [0, 1], the members (N >= 2).
        config: the recipe, with norm="group"; batch_size is the expected Poisson batch size
            (sample rate batch_size / N), with as many steps per epoch as `train_encoder` takes;
            Adam with config.lr and weight_decay. No checkpoints.
        noise_multiplier / target_epsilon: exactly one: the noise std relative to
            max_grad_norm, or the epsilon to reach after config.epochs (Opacus picks the noise).
        max_grad_norm: the per-sample clipping bound.
        delta: the DP delta (default 0.1 / N).
        accountant: Opacus accountant: "rdp" (the default; fast) or "prv" (tighter, slower).
        dp_unsafe_ok: train a coupled-loss framework anyway (module docstring).
    Returns:
        the Encoder, with `privacy_` = {epsilon, delta, noise_multiplier, max_grad_norm,
        sample_rate, steps, accountant, guarantee}.
    """
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier

    _check_images(images, config)
    guarantee = check_dp_config(config, dp_unsafe_ok)
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError("give exactly one of noise_multiplier and target_epsilon")
    if noise_multiplier is not None and not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if target_epsilon is not None and not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon}")
    if target_epsilon is not None and config.epochs < 1:
        raise ValueError("target_epsilon needs config.epochs >= 1")
    if not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    n = len(images)
    delta = 0.1 / n if delta is None else delta
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    device = resolve_device(config.device)

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # caller's RNG untouched
        torch.manual_seed(config.seed)  # seeds the weights and the Poisson batches
        # Expected here: no secure RNG (reproducible runs), and the first layer's input needs no grad.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        encoder = build_dp_encoder(config).to(device)
        trainable = [p for p in encoder.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(n)),
                                             batch_size=min(config.batch_size, n))
        engine = PrivacyEngine(accountant=accountant)
        common = dict(module=encoder, optimizer=optimizer, data_loader=loader, max_grad_norm=max_grad_norm,
                      poisson_sampling=True, noise_generator=torch.Generator(device=device).manual_seed(config.seed))
        steps = config.epochs * _batch_count(n, config.batch_size)  # as many steps as plain training
        if target_epsilon is not None:
            # The rate the Poisson loader will sample at (1 / batches per epoch), not batch / n:
            # with n = 40 and batch 32 those are 0.5 and 0.8, and noise set for 0.8 spends less
            # than the target (5.8 of 8).
            noise_multiplier = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                                    sample_rate=1.0 / len(loader), steps=steps,
                                                    accountant=accountant)
        model, optimizer, loader = engine.make_private(noise_multiplier=noise_multiplier, **common)
        _train(encoder, optimizer, loader, images.to(device), config, steps, device, progress)
    model.to_standard_module()  # removes Opacus's hooks and per-sample attributes
    epsilon = engine.get_epsilon(delta) if steps else 0.0
    encoder.privacy_ = {"epsilon": float(epsilon), "delta": float(delta),
                        "noise_multiplier": float(optimizer.noise_multiplier), "max_grad_norm": float(max_grad_norm),
                        "sample_rate": float(loader.sample_rate), "steps": steps, "accountant": accountant,
                        "guarantee": guarantee}
    return encoder.eval()


def _train(encoder: Encoder, optimizer, loader, images: Tensor, config: TrainConfig, steps: int, device,
           progress: bool) -> None:
    """The DP-SGD loop: `steps` Poisson batches, as many per epoch as plain training takes."""
    from tqdm.auto import tqdm

    generator = torch.Generator(device=device).manual_seed(config.seed)
    per_epoch = steps // max(1, config.epochs)
    batches = (batch for _ in itertools.count() for batch in loader)  # the Poisson sampler, endlessly
    step = 0
    for _ in tqdm(range(config.epochs), disable=not progress, desc=f"dp {config.framework}", unit="epoch"):
        encoder.train()
        losses = []
        for _ in range(per_epoch):
            (idx,) = next(batches)
            encoder.before_step(step / max(1, steps))
            optimizer.zero_grad(set_to_none=True)
            if len(idx) == 0:  # an empty Poisson batch still takes a (noise-only) step
                for p in optimizer.params:
                    p.grad_sample = torch.zeros(0, *p.shape, device=p.device)
            else:
                batch = images[idx.to(device)]
                # Two forward passes of the same samples: Opacus sums each sample's two
                # per-sample gradients (one concatenated pass would count 2B samples).
                loss = encoder.training_loss(augment(batch, config.augmentation, generator),
                                             augment(batch, config.augmentation, generator))
                loss.backward()
                losses.append(float(loss.detach()))
            optimizer.step()
            step += 1
        encoder.history_.append(sum(losses) / len(losses) if losses else float("nan"))
