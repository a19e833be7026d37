"""TrainConfig: everything that decides how an encoder is built and trained."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

FRAMEWORKS = ("simclr", "moco", "byol", "simsiam", "barlowtwins")
NORMS = ("batch", "group")
EXTERNAL = "external"  # an encoder loaded from elsewhere: usable for queries, not trainable here


@dataclass
class TrainConfig:
    """How to build and train one encoder. The defaults are the digits recipe under which the
    membership signal is measurable: a width-32 small CNN, 16x16 inputs, 300 epochs of Adam
    at batch 128 over about 200 members (about a minute on two CPU cores).

    framework: "simclr", "moco", "byol", "simsiam" or "barlowtwins".
    backbone: "small_cnn", "deep_cnn", "resnet18", "resnet50" or "vit_small", or an external
        architecture spec ("timm:resnet18", "torchvision:resnet18", see `external`).
    width: backbone width (None: the backbone's default, see backbones.DEFAULT_WIDTH).
    proj_dim: output size of the projection head.
    temperature: NT-Xent temperature (SimCLR, MoCo).
    queue_size: MoCo's queue of negative keys.
    momentum: starting momentum of the momentum encoder (MoCo, BYOL), raised to 1 on a cosine.
    augmentation: view policy name (see lpla_fast.augment.POLICIES).
    checkpoint_every: epochs between checkpoints when a checkpoint folder is given.
    amp: bf16 autocast, on CUDA only.
    norm: "batch" (BatchNorm, the default) or "group" (every BatchNorm of backbone and heads
        replaced by GroupNorm: no statistic couples the samples of a batch, as DP-SGD needs).
    dataset: name of the data the encoder is trained on (recorded, not used by training).
    """

    framework: str = "simclr"
    backbone: str = "small_cnn"
    width: int | None = None
    image_size: int = 16
    proj_dim: int = 64
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    temperature: float = 0.2
    queue_size: int = 512
    momentum: float = 0.99
    augmentation: str = "digits"
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    checkpoint_every: int = 50
    dataset: str = "digits"
    norm: str = "batch"

    def __post_init__(self):
        from ..augment import POLICIES
        from .backbones import BACKBONES

        if self.framework not in FRAMEWORKS + (EXTERNAL,):
            raise ValueError(f"unknown framework {self.framework!r}; choose one of {', '.join(FRAMEWORKS)}")
        from .external import is_external

        if self.framework != EXTERNAL and self.backbone not in BACKBONES and not is_external(self.backbone):
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)} "
                             f"(or an external spec: timm:NAME, torchvision:NAME, python:module:factory)")
        if self.augmentation not in POLICIES:
            raise ValueError(f"unknown augmentation {self.augmentation!r}; choose one of {', '.join(POLICIES)}")
        for name in ("image_size", "proj_dim", "batch_size", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (contrastive losses compare samples), got {self.batch_size}")
        if not self.lr > 0 or not self.temperature > 0:
            raise ValueError(f"lr and temperature must be > 0, got lr={self.lr}, temperature={self.temperature}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)
