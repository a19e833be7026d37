"""Image sources of `lpla score --images` and `lpla embed --images`: discovery, up-front checks,
and chunked reads that decode to uint8 (n, S, S, 3) arrays.

Four layouts; each shard is one unit of the manifest, and a sample is named by its shard and
row (plus its path where it has one):

* an ImageFolder tree: a folder with no shard files at its top level is one shard whose
  rows are its image files (any depth, sorted by relative path; the path is that relative path);
* ``.npy`` uint8 arrays (N, H, W, C), C = 1 or 3 (memory-mapped, never unpickled);
* Parquet with an ``image`` column of encoded image bytes (binary), or of structs with
  ``bytes`` and ``path`` fields (the layout of Hugging Face image datasets; the path is kept);
* tar shards in the WebDataset layout: the files of a sample share a key (their name up to
  the first dot of the base name); each key with an image file is one row, in tar order, and
  its path is that image file's name in the tar.

Every image is decoded with PIL, converted to RGB, and resized (bilinear) to the encoder's
S x S when its size differs. The shard readers are the one place that decides an image is bad
(it cannot be read, is missing its bytes, or cannot be decoded): `ImageShard.read_rows`
returns the rows it read with the bad ones listed (and zero pixels in their place, so that
every other row keeps its position), `ImageShard.read` raises `ShardError` naming the first
bad row and its path. A shard that cannot be opened or whose file is corrupt as a whole
raises `ShardError` from either.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from .shards import PARQUET_SUFFIXES, ShardError, _read_npy_header, matching_files

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
TAR_SUFFIXES = (".tar",)
IMAGE_COLUMN = "image"


def discover_image_shards(source: str) -> List[str]:
    """Sorted absolute paths of the shards of an image source (a folder, a file or a glob)."""
    if os.path.isdir(source):
        files = [os.path.join(source, n) for n in os.listdir(source)]
        if not any(_is_image_shard(p) for p in files):
            return [os.path.abspath(source)]  # an ImageFolder tree
        source = os.path.join(source, "*")
    shards = matching_files(source, _is_image_shard)
    if not shards:
        raise FileNotFoundError(f"--images {source!r} matches no ImageFolder tree, .npy, .parquet or .tar shard")
    return shards


def _is_image_shard(path: str) -> bool:
    return path.endswith((".npy",) + PARQUET_SUFFIXES + TAR_SUFFIXES) and not path.endswith(".ids.npy")


def open_image_shard(path: str, image_size: int) -> "ImageShard":
    """Open and check a shard; `ShardError` naming it if it is unreadable or malformed."""
    if not os.path.exists(path):
        raise ShardError(path, "does not exist")
    if not os.access(path, os.R_OK):
        raise ShardError(path, "is not readable (permission denied)")
    try:
        if os.path.isdir(path):
            return FolderShard(path, image_size)
        if path.endswith(".npy"):
            return NpyImageShard(path, image_size)
        if path.endswith(PARQUET_SUFFIXES):
            return ParquetImageShard(path, image_size)
        if path.endswith(TAR_SUFFIXES):
            return TarShard(path, image_size)
    except ShardError:
        raise
    except OSError as exc:
        raise ShardError(path, f"cannot be read: {exc}") from exc
    raise ShardError(path, "unknown format (expected a folder, .npy, .parquet or .tar)")


def to_float_images(images: np.ndarray):
    """uint8 (n, H, W, 3) -> float32 torch (n, 3, H, W) in [0, 1]: what `query_views` takes."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes -> uint8 (size, size, 3); PIL's errors propagate."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def fit_array(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, H, W, C) with C = 1 or 3 -> (n, size, size, 3), resizing like `decode_image`."""
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.shape[1:3] == (size, size):
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


@dataclass
class DecodedRows:
    """Rows [start, stop) of an image shard: uint8 (n, S, S, 3) images, their paths (None where
    the shard has none), and the bad rows as {row in the shard: problem}; a bad row's pixels
    are zeros."""

    images: np.ndarray
    paths: Optional[List[str]]
    bad: Dict[int, str]

    def path(self, row: int, start: int) -> Optional[str]:
        return self.paths[row - start] if self.paths is not None else None

    def where(self, row: int, start: int) -> str:
        """'row R (path)' of a row, for messages."""
        path = self.path(row, start)
        return f"row {row}" + (f" ({path})" if path is not None else "")

    def check(self, shard: str, start: int, hint: str = "") -> "DecodedRows":
        """Itself when no row is bad, else `ShardError` naming the first bad row (and its path)."""
        if self.bad:
            row, problem = min(self.bad.items())
            raise ShardError(shard, f"{self.where(row, start)} {problem}{hint}")
        return self


class ImageShard:
    """An opened, checked image shard. Attributes: path, n_rows, size (bytes, to notice a
    changed shard), has_paths. `read_rows(start, stop)` -> `DecodedRows`; `read(start, stop)`
    -> (uint8 (n, S, S, 3), paths or None), or `ShardError` at the first bad image."""

    path: str
    n_rows: int
    size: int
    has_paths: bool = False
    id_type = None  # image shards carry no sample ids (their path names them)

    def chunks(self, batch_rows: int):
        for start in range(0, self.n_rows, batch_rows):
            yield start, min(start + batch_rows, self.n_rows)

    def read_rows(self, start: int, stop: int) -> DecodedRows:
        raise NotImplementedError

    def read(self, start: int, stop: int) -> Tuple[np.ndarray, Optional[List[str]]]:
        rows = self.read_rows(start, stop).check(self.path, start)
        return rows.images, rows.paths

    def _decode_all(self, blobs, paths, start: int, bad: Optional[Dict[int, str]] = None) -> DecodedRows:
        """Decode encoded images; a blob that is None (already found bad, in `bad`) or that PIL
        cannot decode leaves zeros and is listed as bad."""
        bad = dict(bad or {})
        out = np.zeros((len(blobs), self.image_size, self.image_size, 3), np.uint8)
        for i, data in enumerate(blobs):
            if data is None:
                continue
            try:
                out[i] = decode_image(data, self.image_size)
            except Exception as exc:  # PIL raises many types for a corrupt file
                bad[start + i] = f"cannot be decoded as an image: {exc}"
        return DecodedRows(out, paths, bad)


class NpyImageShard(ImageShard):
    def __init__(self, path: str, image_size: int):
        self.path, self.image_size = path, image_size
        self.size = os.path.getsize(path)
        shape, dtype, offset = _read_npy_header(path)
        if dtype != np.dtype("uint8"):
            raise ShardError(path, f"an image .npy must be uint8, got dtype {dtype}")
        if len(shape) != 4 or shape[3] not in (1, 3):
            raise ShardError(path, f"an image .npy must be (N, H, W, C) with C = 1 or 3, got shape {shape}")
        expected = offset + int(np.prod(shape))
        if self.size != expected:
            raise ShardError(path, f"truncated or corrupt: shape {shape} needs {expected} bytes, file has {self.size}")
        self.n_rows = int(shape[0])
        self._shape, self._offset = tuple(shape), offset

    def read_rows(self, start, stop):
        array = np.load(self.path, mmap_mode="r")  # opened per read: the shard may live in a worker process
        return DecodedRows(fit_array(np.array(array[start:stop]), self.image_size), None, {})


class FolderShard(ImageShard):
    has_paths = True

    def __init__(self, path: str, image_size: int):
        self.path, self.image_size = path, image_size
        files = []
        for root, dirs, names in os.walk(path):
            dirs.sort()
            files += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
        self.files = sorted(os.path.relpath(f, path) for f in files)
        self.n_rows = len(self.files)
        self.size = sum(os.path.getsize(os.path.join(path, f)) for f in self.files)

    def read_rows(self, start, stop):
        paths = list(self.files[start:stop])
        blobs, bad = [], {}
        for i, rel in enumerate(paths):
            try:
                with open(os.path.join(self.path, rel), "rb") as f:
                    blobs.append(f.read())
            except OSError as exc:
                blobs.append(None)
                bad[start + i] = f"cannot be read: {exc}"
        return self._decode_all(blobs, paths, start, bad)


class ParquetImageShard(ImageShard):
    def __init__(self, path: str, image_size: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path, self.image_size = path, image_size
        self.size = os.path.getsize(path)
        try:
            meta = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise ShardError(path, f"corrupt or truncated Parquet file: {exc}") from exc
        schema = meta.schema_arrow
        if schema.get_field_index(IMAGE_COLUMN) < 0:
            raise ShardError(path, f"has no column {IMAGE_COLUMN!r} of image bytes (columns: {schema.names})")
        t = schema.field(IMAGE_COLUMN).type
        binary = (pa.types.is_binary(t) or pa.types.is_large_binary(t))
        struct = pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
        if not (binary or struct):
            raise ShardError(path, f"column {IMAGE_COLUMN!r} must hold image bytes (binary, or a struct with "
                                   f"'bytes' and 'path'), got {t}")
        self.has_paths = struct and t.get_field_index("path") >= 0
        self.n_rows = int(meta.metadata.num_rows)
        self._group_starts = np.cumsum([0] + [meta.metadata.row_group(i).num_rows for i in range(meta.metadata.num_row_groups)])

    def read_rows(self, start, stop):
        import pyarrow as pa
        import pyarrow.parquet as pq

        first = int(np.searchsorted(self._group_starts, start, side="right")) - 1
        last = int(np.searchsorted(self._group_starts, stop, side="left"))
        try:
            table = pq.ParquetFile(self.path).read_row_groups(list(range(first, last)), columns=[IMAGE_COLUMN])
        except (pa.ArrowException, OSError) as exc:
            raise ShardError(self.path, f"corrupt data in rows {start}-{stop}: {exc}") from exc
        column = table.column(IMAGE_COLUMN).slice(start - int(self._group_starts[first]), stop - start).combine_chunks()
        paths = None
        if pa.types.is_struct(column.type):
            paths = column.field("path").to_pylist() if self.has_paths else None
            column = column.field("bytes")
        blobs = column.to_pylist()
        bad = {start + i: "has no image bytes" for i, b in enumerate(blobs) if b is None}
        return self._decode_all(blobs, paths, start, bad)


class TarShard(ImageShard):
    has_paths = True

    def __init__(self, path: str, image_size: int):
        self.path, self.image_size = path, image_size
        self.size = os.path.getsize(path)
        # (name, data offset, size) of each sample's image member, in tar order; the data are
        # read with plain file reads, so that worker processes share no tarfile state.
        samples, seen = [], set()
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if not member.isfile() or not member.name.lower().endswith(IMAGE_SUFFIXES):
                        continue
                    base = os.path.basename(member.name)
                    key = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                    if key in seen:
                        raise ShardError(path, f"sample {key!r} has more than one image file")
                    seen.add(key)
                    if member.offset_data + member.size > self.size:
                        raise ShardError(path, f"truncated: {member.name} ends beyond the end of the file")
                    samples.append((member.name, member.offset_data, member.size))
        except tarfile.TarError as exc:
            raise ShardError(path, f"corrupt or truncated tar file: {exc}") from exc
        self.samples = samples
        self.n_rows = len(samples)

    def read_rows(self, start, stop):
        rows = self.samples[start:stop]
        blobs, bad = [], {}
        with open(self.path, "rb") as f:
            for i, (name, offset, size) in enumerate(rows):
                f.seek(offset)
                data = f.read(size)
                if len(data) != size:
                    data, bad[start + i] = None, f"is truncated: {len(data)} of its {size} bytes"
                blobs.append(data)
        paths = [name for name, _, _ in rows]
        return self._decode_all(blobs, paths, start, bad)
