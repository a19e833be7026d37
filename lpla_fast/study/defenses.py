"""Placeholder defenses (replaced by the full module)."""
from __future__ import annotations
from dataclasses import dataclass
import numpy as np
import torch


@dataclass(frozen=True)
class ReleaseDefense:
    name: str
    param: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> "ReleaseDefense":
        name, _, param = spec.partition(":")
        return cls(name, float(param or 0))

    def apply(self, views, seed: int = 0):
        if self.name == "l2-normalize":
            return torch.nn.functional.normalize(views.float(), dim=-1)
        g = torch.Generator().manual_seed(seed)
        scale = views.norm(dim=-1).mean() / views.shape[-1] ** 0.5
        return views + self.param * scale * torch.randn(views.shape, generator=g)


def defended_quality(encoder, defense, train, test, output, seed=0):
    from ..encoders import feature_quality
    return feature_quality(encoder, train.images, train.labels, test.images, test.labels, output=output)


@dataclass(frozen=True)
class TrainingDefense:
    name: str
    param: float

    @classmethod
    def parse(cls, spec):
        name, _, param = spec.partition(":")
        return cls(name, float(param))

    def train_changes(self):
        return {"epochs": int(self.param)} if self.name == "epochs" else {"weight_decay": self.param}

    def extra_members(self, splits):
        return np.zeros(0, np.int64)
