"""The image cache: an image source decoded once into a memory-mapped uint8 array.

`build_image_cache(source, folder, image_size)` reads any source `lpla score --images` reads
(an ImageFolder tree, uint8 ``.npy``, Parquet image bytes, WebDataset tar; see `images`),
chunk by chunk, with the same shard readers and decoding, and writes FOLDER:

* ``images.npy``: uint8 (N, C, S, S), rows in source order (shard by shard, each shard's rows
  in order), read back with ``np.load(..., mmap_mode="r")``. No float copy of the set is ever
  made: training and view queries convert one batch at a time (`encoders.pixels`);
* ``rows.parquet``: per row its ``id`` and ``hash``. The id is the image's path inside an
  ImageFolder tree, else ``<shard file>:<path inside the shard>`` or ``<shard file>:<row>``;
  the hash (BLAKE2b, 128 bits, hex) is of the decoded pixels, to find identical images;
* ``meta.json``, written last: source, image size, channels, count, the shards it was built
  from, the skipped images, the format version. A folder without it is no cache.

Channels: the readers decode to RGB. C = 3 keeps it (a grayscale file becomes three equal
channels); C = 1 takes the luminance L = (19595 R + 38470 G + 7471 B + 2^15) >> 16 (ITU-R
601-2, PIL's "L" conversion), which gives back a grayscale file's own values.

Each file is written under a temporary name and renamed when complete. A build over a complete
cache of the same source (same shards, sizes and row counts), size and channels reuses it.
An undecodable image stops the build with one line naming it, or with ``skip_bad=True`` is
left out and recorded in ``skipped`` (a shard that cannot be opened at all is recorded whole).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from ..encoders.pixels import CACHE_IMAGES_FILE
from ..fileio import remove_if_present, replace_atomically, write_json
from .images import discover_image_shards, open_image_shard
from .shards import ShardError

CACHE_FORMAT = "lpla_fast.image_cache"
CACHE_VERSION = 1
META_FILE = "meta.json"
ROWS_FILE = "rows.parquet"
CHANNELS = (1, 3)
_LUMA = np.array([19595, 38470, 7471], dtype=np.uint32)  # PIL's RGB -> L weights, scaled by 2^16


@dataclass
class ImageCache:
    """An opened image cache (see the module docstring)."""

    folder: str
    images: np.ndarray  # uint8 (N, C, S, S), memory-mapped
    ids: List[str]
    hashes: List[str]
    skipped: List[dict] = field(default_factory=list)  # [{"id": ..., "reason": ...}]
    image_size: int = 0
    channels: int = 3
    source: str = ""

    def __len__(self) -> int:
        return int(self.images.shape[0])


def open_image_cache(folder: str) -> ImageCache:
    """The complete cache in `folder`; FileNotFoundError / ValueError naming what is wrong."""
    meta = _read_meta(folder)
    if meta is None:
        raise FileNotFoundError(f"{folder!r} holds no complete image cache ({META_FILE} is missing)")
    import pyarrow.parquet as pq

    images = np.load(os.path.join(folder, CACHE_IMAGES_FILE), mmap_mode="r")
    size, channels = int(meta["image_size"]), int(meta["channels"])
    if images.dtype != np.uint8 or images.shape != (int(meta["count"]), channels, size, size):
        raise ValueError(f"image cache {folder!r}: {CACHE_IMAGES_FILE} is {images.dtype} {images.shape}, "
                         f"its {META_FILE} says uint8 ({meta['count']}, {channels}, {size}, {size})")
    table = pq.read_table(os.path.join(folder, ROWS_FILE))
    if table.num_rows != len(images):
        raise ValueError(f"image cache {folder!r}: {ROWS_FILE} has {table.num_rows} rows, the images {len(images)}")
    return ImageCache(folder, images, table.column("id").to_pylist(), table.column("hash").to_pylist(),
                      list(meta.get("skipped", [])), size, channels, meta["source"])


def build_image_cache(source: str, folder: str, image_size: int, channels: Optional[int] = None,
                      skip_bad: bool = False, chunk_rows: int = 512, progress: bool = True) -> ImageCache:
    """Decode every image of `source` into the cache in `folder` (or reuse the cache there).

    Args:
        source: an image source of `lpla score --images` (folder, file or glob).
        folder: the cache's folder (created; it must be empty or hold an image cache).
        image_size: side S of the cached images (the encoder's input size).
        channels: 3 (default) or 1; see the module docstring.
        skip_bad: leave undecodable images (and shards that cannot be opened) out, recorded
            in `skipped`, instead of stopping at the first.
        chunk_rows: images decoded and written at a time (memory is bounded by it).
        progress: a progress bar over the images.
    Returns:
        the opened `ImageCache`.
    """
    channels = 3 if channels is None else channels
    if channels not in CHANNELS:
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be an integer >= 1, got {image_size!r}")
    if int(chunk_rows) != chunk_rows or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    image_size = int(image_size)
    _check_folder(folder)
    shards, skipped = [], []
    for path in discover_image_shards(source):
        try:
            shards.append(open_image_shard(path, image_size))
        except ShardError as exc:
            if not skip_bad:
                raise ShardError(exc.shard, f"{exc.problem} (pass skip_bad / --skip-bad-images to leave it out)") from exc
            skipped.append({"id": path, "reason": exc.problem})
    total = sum(s.n_rows for s in shards)
    if total == 0:
        raise ValueError(f"image source {source!r} holds no images")
    fingerprint = [[s.path, int(s.n_rows), int(s.size)] for s in shards]
    key = {"source": os.path.abspath(source), "image_size": image_size, "channels": channels, "shards": fingerprint}
    meta = _read_meta(folder)
    if meta is not None and all(meta.get(k) == v for k, v in key.items()):
        if meta["skipped"] and not skip_bad:
            first = meta["skipped"][0]
            raise ValueError(f"{first['id']}: {first['reason']} (the cache in {folder!r} left it out; "
                             "pass skip_bad / --skip-bad-images to use it)")
        return open_image_cache(folder)
    remove_if_present(os.path.join(folder, META_FILE))  # from here the folder holds no complete cache
    for name in os.listdir(folder):  # left by a build that was killed
        if name.startswith(".tmp-"):
            remove_if_present(os.path.join(folder, name))

    ids, hashes = [], []

    def write_images(tmp: str) -> None:
        _decode_into(tmp, shards, total, channels, image_size, skip_bad, chunk_rows, progress, ids, hashes, skipped)

    replace_atomically(os.path.join(folder, CACHE_IMAGES_FILE), write_images)
    if not ids:
        raise ValueError(f"no image of {source!r} could be decoded ({len(skipped)} skipped; first: "
                         f"{skipped[0]['id']}: {skipped[0]['reason']})")
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": pa.array(ids, pa.string()), "hash": pa.array(hashes, pa.string())})
    replace_atomically(os.path.join(folder, ROWS_FILE), lambda tmp: pq.write_table(table, tmp))
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, **key, "count": len(ids), "skipped": skipped}
    write_json(os.path.join(folder, META_FILE), meta)
    return open_image_cache(folder)


def _decode_into(path, shards, total, channels, size, skip_bad, chunk_rows, progress, ids, hashes, skipped) -> None:
    """Write the images of `shards` to the .npy at `path`, chunk by chunk, good rows only."""
    from tqdm.auto import tqdm

    row_bytes = channels * size * size
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(total, channels, size, size))
    offset = array.offset
    del array  # the file is allocated; rows go in with plain writes, so written pages never count as our memory
    count = 0
    bar = tqdm(total=total, unit="images", unit_scale=True, disable=not progress, desc="image cache")
    with open(path, "r+b") as f:
        for shard in shards:
            name = os.path.basename(shard.path)
            folder_tree = os.path.isdir(shard.path)
            for start, stop in shard.chunks(chunk_rows):
                try:
                    decoded = shard.read_rows(start, stop)
                except ShardError as exc:
                    if not skip_bad:
                        raise
                    skipped.append({"id": f"{shard.path} (rows {start}-{stop})", "reason": exc.problem})
                    bar.update(stop - start)
                    continue
                if not skip_bad:
                    decoded.check(shard.path, start, " (pass skip_bad / --skip-bad-images to leave it out)")
                keep = np.ones(stop - start, bool)
                for row, problem in sorted(decoded.bad.items()):
                    skipped.append({"id": _row_id(name, folder_tree, decoded.paths, start, row), "reason": problem})
                    keep[row - start] = False
                pixels = np.ascontiguousarray(to_channels(decoded.images[keep], channels).transpose(0, 3, 1, 2))
                os.pwrite(f.fileno(), pixels.tobytes(), offset + count * row_bytes)
                for i in np.flatnonzero(keep):
                    ids.append(_row_id(name, folder_tree, decoded.paths, start, start + int(i)))
                hashes += [hashlib.blake2b(p.tobytes(), digest_size=16).hexdigest() for p in pixels]
                count += len(pixels)
                bar.update(stop - start)
        if count < total:  # images were skipped: the same header for fewer rows, the file cut short
            f.seek(0)
            f.write(_npy_header((count, channels, size, size), offset))
            f.truncate(offset + count * row_bytes)
    bar.close()


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (n, S, S, 3) RGB -> (n, S, S, channels): as is, or its luminance (see the module)."""
    if channels == 3:
        return images
    luma = (images.astype(np.uint32) @ _LUMA + (1 << 15)) >> 16
    return luma.astype(np.uint8)[..., None]


def _row_id(shard_name: str, folder_tree: bool, paths, start: int, row: int) -> str:
    path = paths[row - start] if paths is not None else None
    if folder_tree:
        return path
    return f"{shard_name}:{path if path is not None else row}"


def _npy_header(shape, length: int) -> bytes:
    """A version-1.0 .npy header for uint8 C-order `shape`, padded to `length` bytes in all
    (the data offset of the file it replaces the header of)."""
    text = repr({"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    magic = b"\x93NUMPY\x01\x00"
    body = length - len(magic) - 2
    if len(text) + 1 > body:
        raise AssertionError("a smaller shape needs a longer header")
    return magic + struct.pack("<H", body) + (text.ljust(body - 1) + "\n").encode("latin1")


def _read_meta(folder: str) -> Optional[dict]:
    path = os.path.join(folder, META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
        return None
    return meta


def _check_folder(folder: str) -> None:
    """Refuse a folder that holds files other than an image cache's (it is never overwritten)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"image cache folder {folder!r} is a file")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        return
    ours = {CACHE_IMAGES_FILE, ROWS_FILE, META_FILE}
    others = [n for n in os.listdir(folder) if n not in ours and not n.startswith(".tmp-")]
    if others:
        raise ValueError(f"image cache folder {folder!r} holds other files ({', '.join(sorted(others)[:3])}); "
                         "give an empty folder or one that holds an image cache")
