"""Backbones: image (B, 3, H, W) -> embedding (B, D). The embedding is what an encoder API
releases and what the attacks query by default."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .pooling import GlobalAvgPool

BACKBONES = ("small_cnn", "deep_cnn", "resnet18", "resnet50", "vit_small")
DEFAULT_WIDTH = {"small_cnn": 32, "deep_cnn": 32, "resnet18": 64, "resnet50": 64, "vit_small": 192}
FIXED_WIDTH = ("resnet18", "resnet50")  # standard ResNets: DEFAULT_WIDTH is their only width


class SmallCNN(nn.Module):
    """Four 3x3 conv + BatchNorm + ReLU blocks (width w, 2w, 4w, 4w; two stride-2), then global
    average pooling: a 4w-dimensional embedding that trains on a CPU in seconds. With
    `repeats` = 2 ("deep_cnn") every block is doubled: eight conv layers of the same widths,
    the architecture ladder's step in depth at a fixed width.

    `feature_map(x)` is the last feature map (B, 4w, H/4, W/4) and `pool` the pooling, so that
    a scoring job can fuse the pooling with the scoring (see `pooling`)."""

    def __init__(self, width: int = 32, in_channels: int = 3, repeats: int = 1):
        super().__init__()
        widths = [c for c in (width, 2 * width, 4 * width, 4 * width) for _ in range(repeats)]
        channels = [in_channels] + widths
        strides = [s if i == 0 else 1 for s in (1, 2, 2, 1) for i in range(repeats)]
        layers = []
        for c_in, c_out, stride in zip(channels[:-1], channels[1:], strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = GlobalAvgPool()
        self.out_dim = 4 * width

    def feature_map(self, x):
        return self.features(x)

    def forward(self, x):
        return self.pool(self.features(x))


def resnet_cifar(name: str) -> nn.Module:
    """torchvision ResNet with the CIFAR stem (3x3 stride-1 first conv, no max-pool) and no
    classifier; parameter names match torchvision's, as solo-learn and lightly checkpoints use."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    block, layers = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}[name]
    return _resnet_class()(block, layers)


@functools.lru_cache(maxsize=None)
def _resnet_class():
    # Defined on first use: importing torchvision costs a second that most commands do not need.
    import torchvision

    class CifarResNet(torchvision.models.ResNet):
        """A torchvision ResNet whose `feature_map(x)` is layer4's output and whose `pool` is a
        GlobalAvgPool (it has no weights, so the state dict is torchvision's)."""

        def __init__(self, block, layers):
            super().__init__(block, layers)
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
            self.out_dim = self.fc.in_features
            self.fc = nn.Identity()
            del self.avgpool
            self.pool = GlobalAvgPool()

        def feature_map(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            return self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(x)))))

        def forward(self, x):
            return self.pool(self.feature_map(x))

    CifarResNet.__module__, CifarResNet.__qualname__ = __name__, "CifarResNet"
    return CifarResNet


def __getattr__(name):  # `backbones.CifarResNet`, also for unpickling
    if name == "CifarResNet":
        return _resnet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def vit_small(width: int, image_size: int) -> nn.Module:
    """A small torchvision VisionTransformer (6 layers, hidden size `width`, class-token output)."""
    from torchvision.models import VisionTransformer

    patch = 4 if image_size <= 32 else 8
    if image_size % patch:
        raise ValueError(f"vit_small needs image_size divisible by its patch size {patch}, got {image_size}")
    heads = next(h for h in (6, 4, 3, 2, 1) if (width % h == 0 and width // h >= 8) or h == 1)
    net = VisionTransformer(image_size=image_size, patch_size=patch, num_layers=6, num_heads=heads,
                            hidden_dim=width, mlp_dim=4 * width)
    net.heads = nn.Identity()
    net.out_dim = width
    return net


def make_backbone(name: str, width: int | None = None, image_size: int = 16) -> nn.Module:
    """Build a backbone by name; the module's `out_dim` is its embedding size.

    `width` is the base channel count of small_cnn / deep_cnn and the hidden size of vit_small (None picks
    DEFAULT_WIDTH); the ResNets have their standard width. An external spec (timm:NAME,
    torchvision:NAME, python:module:factory, see `external`) builds that model, without width.
    """
    from .external import is_external, make_external_backbone

    if is_external(name):
        if width is not None:
            raise ValueError(f"an external backbone ({name}) has no width parameter, got width={width}")
        return make_external_backbone(name, image_size)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    width = DEFAULT_WIDTH[name] if width is None else int(width)
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if name == "small_cnn":
        return SmallCNN(width)
    if name == "deep_cnn":
        return SmallCNN(width, repeats=2)
    if name in FIXED_WIDTH:
        if width != DEFAULT_WIDTH[name]:
            raise ValueError(f"{name} has a fixed width of {DEFAULT_WIDTH[name]}; got width={width}")
        return resnet_cifar(name)
    return vit_small(width, image_size)


def replace_batch_norm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm in `module` (in place) for a GroupNorm: over (B, C, H, W) maps with
    gcd(C, 8) groups, over (B, C) features with one group (a LayerNorm with a per-channel affine;
    more groups of a few features would normalize each group to +-1)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            c = child.num_features
            groups = 1 if isinstance(child, nn.BatchNorm1d) else math.gcd(c, 8)
            norm = nn.GroupNorm(groups, c, eps=child.eps, affine=child.affine)
            if child.affine:  # a frozen (momentum) branch stays frozen
                norm.requires_grad_(child.weight.requires_grad)
            setattr(module, name, norm)
        else:
            replace_batch_norm(child)
    return module


@torch.no_grad()
def infer_out_dim(backbone: nn.Module, image_size: int) -> int:
    """Embedding size of any backbone: its `out_dim`, or one forward pass of a dummy batch."""
    if hasattr(backbone, "out_dim"):
        return int(backbone.out_dim)
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters(), torch.empty(0)).device
    out = backbone(torch.zeros(2, 3, image_size, image_size, device=device))
    backbone.train(was_training)
    if out.dim() != 2:
        raise ValueError(f"the backbone must return (B, D) embeddings, got shape {tuple(out.shape)}")
    return int(out.shape[1])
