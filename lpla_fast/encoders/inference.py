"""An encoder made ready to run forward only, in eval mode: what a scoring job does to the
encoder it owns before its first chunk.

* `fold_batch_norms`: in eval mode a BatchNorm2d is a fixed per-channel affine map; where it reads
  nothing but the output of the convolution just before it, the two are one convolution with
  scaled weights and a bias. Outputs move by float rounding (about 1e-6 relative in float32). A
  pair is folded only where the code that runs it is known, so that no guess about a model's
  forward can change what it computes: consecutive children of a plain `nn.Sequential` (whose
  forward is torch's), and the stem and blocks of torchvision's ResNets (this project's CIFAR
  ResNets included). Only exact `nn.Conv2d` and `nn.BatchNorm2d` modules are folded (a subclass
  may compute something else), each used once in the model, the BatchNorm with running statistics
  (without them, eval mode normalizes by the batch's own), and neither with a forward hook (but
  the layout hooks below). With `in_place`, the weights are scaled where they lie: a scoring job
  first moves them into huge pages, then folds (7 ms less for a ResNet-18 than folding into new
  tensors and moving those).
* `place_in_huge_pages`: the weights moved into one block of memory that Linux backs with
  2 MB pages (transparent huge pages, asked for with madvise). A CPU forward pass reads every
  weight once per batch (oneDNN reorders them at each call), and with 4 kB pages it ran
  measurably slower (page walks, most likely). A checkpoint read by `load_encoder` is
  memory-mapped and may already sit in such pages; weights computed in the process (folded into
  new tensors) never do.
* `set_conv_layouts`: each convolution in the memory layout that oneDNN runs fastest for the
  input it gets: channels-last (NHWC) where the input has at least half as many positions per
  image as channels, contiguous (NCHW) where it is small and deep (a ResNet's last stages). The
  layout is a rule of the shapes, never a timing, so that scores never depend on the machine's
  load.

Measured in `bench/RESULTS.md` (2-core Xeon, AVX-512, eval forward pass, the whole model
channels-last from 32 pixels): folding alone, ResNet-18 1.14x at 16 x 16 and 1.18x at 64 x 64,
the small CNN 1.07x and 1.38x. In a scoring job at 16 x 16, ResNet-18's chunks ran slower folded in
4 kB pages than unfolded from the memory-mapped checkpoint, and 11 % faster folded in huge pages.
"""

from __future__ import annotations

import mmap
import sys
import types
from collections import Counter
from typing import Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import evaluating


def fold_batch_norms(model: nn.Module, in_place: bool = False) -> int:
    """Fold every foldable BatchNorm2d of `model` into its convolution, in place; the folded
    BatchNorms become `nn.Identity`. Returns how many were folded.

    in_place: scale each convolution's weight tensor where it lies (unless another module shares
    it) instead of giving the convolution a new one: for a model that owns its weights, whose
    memory this keeps (huge pages, say) and which needs no new 45 MB for a ResNet-18. A tensor
    taken from the model before (a state dict) then sees the scaled weights.

    Afterwards the model is for eval-mode inference only: training it would no longer
    normalize anything.
    """
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    weight_uses = Counter(id(t) for _, t in model.named_parameters(remove_duplicate=False))
    folded = 0
    for parent, conv_name, bn_name in list(_known_pairs(model)):
        conv, bn = parent._modules[conv_name], parent._modules[bn_name]
        if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:
            continue
        if uses[id(conv)] != 1 or uses[id(bn)] != 1 or not bn.track_running_stats or bn.running_mean is None:
            continue
        if _hooked(conv) or _hooked(bn):  # a hook may read or change what passes between them
            continue
        _fold(conv, bn, in_place and weight_uses[id(conv.weight)] == 1)
        parent._modules[bn_name] = nn.Identity()
        folded += 1
    return folded


def _hooked(module: nn.Module) -> bool:
    """Whether a hook may read or change a module's input or output (a `_Layout` hook changes
    only how the input is laid out in memory)."""
    pre = [h for h in module._forward_pre_hooks.values() if not isinstance(h, _Layout)]
    return bool(module._forward_hooks or pre)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d, in_place: bool) -> None:
    """conv's weight scaled by gamma / sqrt(var + eps) per output channel, its bias
    (b - mean) * scale + beta: the per-channel numbers in float64, the weights scaled in their
    own dtype (one rounding each; a float64 copy of a ResNet's weights took 18 ms)."""
    with torch.no_grad():
        f64 = dict(dtype=torch.float64)
        scale = torch.rsqrt(bn.running_var.to(**f64) + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.to(**f64)
        bias = -bn.running_mean.to(**f64) if conv.bias is None else conv.bias.to(**f64) - bn.running_mean.to(**f64)
        bias = bias * scale + (0.0 if bn.bias is None else bn.bias.to(**f64))
        dtype = conv.weight.dtype
        scale = scale.to(dtype).view(-1, 1, 1, 1)
        if in_place:
            conv.weight.mul_(scale)
            conv.weight.requires_grad_(False)
        else:
            conv.weight = nn.Parameter(conv.weight * scale, requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def _known_pairs(model: nn.Module) -> Iterator[Tuple[nn.Module, str, str]]:
    """(parent, first child's name, second child's name) of every place where the forward applies
    the second child to the first one's output and nothing else reads that output; whether the two
    are a convolution and a BatchNorm is `fold_batch_norms`'s check."""
    blocks = _torchvision_resnet_pairs()
    for module in model.modules():
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                yield module, first, second
        for cls, pairs in blocks:
            if type(module) is cls:
                for conv_name, bn_name in pairs:
                    yield module, conv_name, bn_name


def _torchvision_resnet_pairs() -> List[Tuple[type, List[Tuple[str, str]]]]:
    """torchvision's ResNet classes whose forward is known, and their conv/BatchNorm pairs. Empty
    when torchvision's ResNets were never imported: then no model holds one."""
    resnet = sys.modules.get("torchvision.models.resnet")
    if resnet is None:
        return []
    from .backbones import _resnet_class

    stem = [("conv1", "bn1")]  # ResNet.forward and CifarResNet.feature_map: relu(bn1(conv1(x)))
    return [(resnet.ResNet, stem), (_resnet_class(), stem),
            (resnet.BasicBlock, [("conv1", "bn1"), ("conv2", "bn2")]),
            (resnet.Bottleneck, [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")])]


def set_conv_layouts(model: nn.Module, example: torch.Tensor) -> int:
    """Give every Conv2d of `model` the layout that runs it fastest on a CPU for the input it
    will get: channels-last where 2 * H * W >= input channels, contiguous elsewhere. One forward
    pass of `example` (a single input of the size to come, in eval mode; plain convolutions only
    work out their output's shape) finds each convolution's input; its weight is then stored in
    its layout, and a forward pre-hook hands it its input in that layout. Outputs move by float
    rounding only. Returns how many convolutions run channels-last.

    Measured on a 2-core Xeon (AVX-512), 2 threads, eval forward of folded backbones, median of
    paired rounds against the whole model in one layout (contiguous below 32 pixels,
    channels-last from 32): ResNet-18 1.04-1.06x at 16 x 16 and 1.15x at 32 x 32, the small CNN
    1.10-1.12x and the deep CNN 1.09x at 16 x 16, level (0.98-1.04x) at 64 x 64; per convolution,
    ResNet-18's 3 x 3 ones at 16 x 16 ran 1.16x channels-last over 16 x 16 inputs of 64 channels
    and 0.30x over 2 x 2 inputs of 512.
    """
    layouts = {}

    def record(conv, args):
        x = args[0]
        if conv not in layouts and x.dim() == 4:
            wide = 2 * x.shape[-2] * x.shape[-1] >= x.shape[1]
            layouts[conv] = torch.channels_last if wide else torch.contiguous_format

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    probes = [conv.register_forward_pre_hook(record) for conv in convs]
    # Only shapes matter here: an exact Conv2d computes its output's shape alone and hands on
    # zeros. A real pass at a batch of one cost 8-10 ms for a ResNet-18, mostly oneDNN setting
    # up kernels for that batch size; this one 2 ms. (A subclass may shape its output its own way.)
    stand_ins = [conv for conv in convs if type(conv) is nn.Conv2d and "forward" not in vars(conv)]
    for conv in stand_ins:
        conv.forward = types.MethodType(_zeros_of_output_shape, conv)
    try:
        with evaluating(model):
            model(example)
    finally:
        for probe in probes:
            probe.remove()
        for conv in stand_ins:
            del conv.forward
    with torch.no_grad():
        for conv, layout in layouts.items():
            conv.weight.data = conv.weight.data.contiguous(memory_format=layout)
            for hook in [k for k, h in conv._forward_pre_hooks.items() if isinstance(h, _Layout)]:
                del conv._forward_pre_hooks[hook]  # set again: the last layout wins
            conv.register_forward_pre_hook(_Layout(layout))
    return sum(layout is torch.channels_last for layout in layouts.values())


def _zeros_of_output_shape(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    meta = F.conv2d(x.to("meta"), conv.weight.to("meta"), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return x.new_zeros(meta.shape)


class _Layout:
    """Forward pre-hook: the module's input in one memory layout (a no-op when it already is)."""

    def __init__(self, memory_format: torch.memory_format):
        self.memory_format = memory_format

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0].contiguous(memory_format=self.memory_format), *args[1:])


ALIGN = 64  # bytes: a cache line, and more than any dtype needs
HUGE_PAGE = 2 << 20


def place_in_huge_pages(model: nn.Module) -> int:
    """Move the CPU parameters and buffers of `model` into one anonymous memory block advised for
    transparent huge pages, keeping each tensor's shape and strides (channels-last stays
    channels-last); returns the bytes moved, 0 where the platform has no such advice or the
    kernel's transparent huge pages are off (then nothing changes). Tensors shared by two
    modules stay shared."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or transparent_huge_pages() not in ("always", "madvise"):
        return 0
    tensors, seen = [], set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen and t.device.type == "cpu" and t.numel() and _dense(t):
            seen.add(id(t))
            tensors.append(t)
    sizes = [_aligned(t.numel() * t.element_size()) for t in tensors]
    total = sum(sizes)
    if total == 0:
        return 0
    # private: shared anonymous memory is shmem, which has its own (usually off) huge-page setting
    block = mmap.mmap(-1, _aligned(total, HUGE_PAGE) + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    block.madvise(advice)
    raw = torch.frombuffer(block, dtype=torch.uint8)  # keeps `block` alive as long as a tensor uses it
    offset = (-raw.data_ptr()) % HUGE_PAGE  # start on a huge-page boundary
    with torch.no_grad():
        for t, size in zip(tensors, sizes):
            n = t.numel() * t.element_size()
            placed = raw[offset:offset + n].view(t.dtype).as_strided(t.shape, t.stride())
            placed.copy_(t)
            t.data = placed
            offset += size
    return total


def transparent_huge_pages(path: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> str:
    """The kernel's transparent-huge-page mode ("always", "madvise", "never"), "unavailable"
    where there is none (not Linux)."""
    try:
        with open(path) as f:
            return f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return "unavailable"


def _dense(t: torch.Tensor) -> bool:
    """Whether `t` fills its memory without gaps (contiguous, or channels-last): then its
    strides describe a copy of the same size."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _aligned(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to
