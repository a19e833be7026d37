"""Encoder: a backbone (the released representation) plus a projection head."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .config import TrainConfig

OUTPUTS = ("backbone", "head")


@contextmanager
def evaluating(module: nn.Module):
    """Eval mode without autograd for the block; the module's training mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield module
    finally:
        module.train(was_training)


class Encoder(nn.Module):
    """A backbone and its projection head. Frameworks subclass it and add `training_loss`.

    Attributes:
        backbone: image (B, 3, H, W) -> embedding (B, D).
        head: embedding -> projection (B, proj_dim); nn.Identity() when there is none.
        config: the TrainConfig it was built from.
        history_: mean training loss per finished epoch.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None, config: TrainConfig, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.config = config
        self.feature_dim = int(feature_dim)
        self.history_: list[float] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def embed(self, x: Tensor, output: str = "backbone") -> Tensor:
        """(B, 3, H, W) images -> (B, D) backbone embeddings, or projection-head outputs."""
        check_output(output)
        z = self.backbone(x)
        return self.head(z) if output == "head" else z

    def embed_dim(self, output: str = "backbone") -> int:
        check_output(output)
        if output == "backbone" or isinstance(self.head, nn.Identity):
            return self.feature_dim
        with torch.no_grad():
            was_training = self.head.training
            self.head.eval()
            device = next(self.head.parameters()).device
            d = self.head(torch.zeros(2, self.feature_dim, device=device)).shape[1]
            self.head.train(was_training)
        return int(d)

    def training_loss(self, view0: Tensor, view1: Tensor) -> Tensor:
        raise NotImplementedError(
            f"an encoder of framework {self.config.framework!r} cannot be trained here; "
            "build one with train_encoder(config=TrainConfig(framework=...))"
        )

    def before_step(self, progress: float) -> None:
        """Hook run before each optimizer step; progress runs from 0 to 1 over training."""


def check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be 'backbone' or 'head', got {output!r}")
