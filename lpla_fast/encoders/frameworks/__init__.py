"""One module per contrastive framework; each wires a backbone, lightly's heads and loss."""

from ..backbones import infer_out_dim, make_backbone, replace_batch_norm
from ..base import Encoder
from ..config import FRAMEWORKS, TrainConfig
from .barlowtwins import BarlowTwins
from .byol import BYOL
from .moco import MoCo
from .simclr import SimCLR
from .simsiam import SimSiam

FRAMEWORK_CLASSES = {"simclr": SimCLR, "moco": MoCo, "byol": BYOL, "simsiam": SimSiam,
                     "barlowtwins": BarlowTwins}
assert tuple(FRAMEWORK_CLASSES) == FRAMEWORKS


def build_encoder(config: TrainConfig) -> Encoder:
    """A freshly initialised encoder of config.framework on config.backbone (uses torch's global
    RNG for the initial weights; train_encoder seeds it in a forked RNG state). With
    config.norm == "group", every BatchNorm (backbone, heads, momentum copies) is a GroupNorm."""
    if config.framework not in FRAMEWORK_CLASSES:
        raise ValueError(f"cannot build framework {config.framework!r}; choose one of {', '.join(FRAMEWORKS)}")
    backbone = make_backbone(config.backbone, config.width, config.image_size)
    encoder = FRAMEWORK_CLASSES[config.framework](backbone, config, infer_out_dim(backbone, config.image_size))
    return replace_batch_norm(encoder) if config.norm == "group" else encoder
