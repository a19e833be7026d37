"""Images as encoder inputs without a float copy of the whole set.

Training and view queries take either a float (N, C, H, W) tensor in [0, 1] or a uint8
(N, C, H, W) array (numpy, memory-mapped or not, or a torch tensor) with an optional array of
the rows to use. A uint8 batch is gathered and scaled to float (x / 255, the scaling of every
loader in `lpla_fast.data`) one batch at a time, so memory is bounded by the batch, not by N.

`CacheRows` names rows of an image cache (`lpla_fast.streaming.cache`) by its folder: small
and picklable, so a training job sent to another process or a Ray worker reads its rows from
the memory-mapped file instead of carrying pixels.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

# The pixel file of an image cache: uint8 (N, C, S, S), written by streaming.cache.
CACHE_IMAGES_FILE = "images.npy"


@dataclass
class CacheRows:
    """Rows `rows` (int64 indices) of the image cache in `folder`."""

    folder: str
    rows: np.ndarray

    def __post_init__(self):
        self.rows = np.asarray(self.rows, dtype=np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self) -> np.ndarray:
        """The cache's whole uint8 (N, C, S, S) array, memory-mapped (nothing is read yet)."""
        path = os.path.join(self.folder, CACHE_IMAGES_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{self.folder!r} holds no image cache ({CACHE_IMAGES_FILE} is missing)")
        return np.load(path, mmap_mode="r")


Images = Union[Tensor, np.ndarray, CacheRows]


def resolve_images(images: Images, rows=None) -> Tuple[Union[Tensor, np.ndarray], Optional[np.ndarray]]:
    """(array, rows or None) of the accepted image inputs, checked: a float tensor, or a uint8
    (N, C, H, W) array or tensor with optional rows, or `CacheRows` (whose rows are used)."""
    if isinstance(images, CacheRows):
        if rows is not None:
            raise ValueError("pass rows either inside CacheRows or as rows=, not both")
        images, rows = images.load(), images.rows
    if isinstance(images, Tensor):
        if images.dim() != 4 or not (images.is_floating_point() or images.dtype == torch.uint8):
            raise ValueError(f"images must be a float or uint8 (N, C, H, W) tensor, got "
                             f"{images.dtype} {tuple(images.shape)}")
        if images.is_floating_point() and rows is not None:
            raise ValueError("rows= is for uint8 images; index a float tensor directly")
    elif isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"an images array must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    else:
        raise ValueError(f"images must be a tensor, a uint8 numpy array or CacheRows, got {type(images).__name__}")
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(images)):
            raise ValueError(f"rows must lie in [0, {len(images)}), got [{rows.min()}, {rows.max()}]")
    return images, rows


def image_count(images, rows: Optional[np.ndarray]) -> int:
    return len(rows) if rows is not None else int(images.shape[0])


def float_batch(images, rows: Optional[np.ndarray], index) -> Tensor:
    """Float32 [0, 1] images at positions `index` (a slice, or integer indices into the used
    rows) of resolved images: only these images are read and converted."""
    if isinstance(images, Tensor) and images.is_floating_point():
        return images[index]
    if isinstance(index, Tensor):
        index = index.cpu().numpy()
    picked = rows[index] if rows is not None else index
    if isinstance(picked, slice):
        batch = images[picked]
    else:
        # numpy gathers fancy indices from a memory map by reading just those rows
        batch = images[np.asarray(picked)] if isinstance(images, np.ndarray) else images[torch.as_tensor(picked)]
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(np.array(batch))  # a copy: a memory map is read-only
        release_pages(images)
    return batch.float().div_(255.0)


def release_pages(array: np.ndarray) -> None:
    """Unmap the pages of a memory-mapped array from this process (they stay in the OS page
    cache, and a later read maps them back). Every row read through a memory map would
    otherwise count in the process's resident memory until the OS reclaims it, which grows
    with the number of images a training run or a query reads."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)
