"""Sharded embedding files: discovery, up-front validation, and chunked reads.

Two formats:

* ``.npy`` (memory-mapped, never unpickled) of shape (N, D) or (N, K, D) in float32 or
  float16. numpy has no bfloat16, so a bfloat16 shard is stored as its raw bit patterns in a
  uint16 ``.npy`` whose name ends in ``.bf16.npy`` (see `save_bf16_npy`). Sample ids come
  from an optional sidecar ``<stem>.ids.npy`` (N,) of integers or strings; without one a
  sample is known by its shard and row alone.
* Parquet with an id column and an embedding column of fixed-size lists: (N, D) is
  ``fixed_size_list<float, D>``, (N, K, D) is ``fixed_size_list<fixed_size_list<float, D>, K>``
  (float32, float16 or float64 values); the id column may be of any type. A chunk of rows
  is read as the row groups that cover it (a row group larger than a chunk is read once).

Every shard is opened and checked before any scoring (`open_shard`): a truncated or corrupt
file, a wrong dtype or rank, or a missing column raises `ShardError` naming the shard.
"""

from __future__ import annotations

import glob
import hashlib
import mmap
import os
from dataclasses import dataclass
from typing import Iterator, List, Tuple

import numpy as np

NPY_SUFFIX = ".npy"
BF16_SUFFIX = ".bf16.npy"
IDS_SUFFIX = ".ids.npy"
PARQUET_SUFFIXES = (".parquet", ".pq")
_NPY_DTYPES = {np.dtype("float32"): "float32", np.dtype("float16"): "float16"}


class ShardError(ValueError):
    """A shard that cannot be scored; the message names the shard and the problem."""

    def __init__(self, shard: str, problem: str):
        super().__init__(f"shard {shard}: {problem}")
        self.shard = shard
        self.problem = problem

    def __reduce__(self):  # crosses process boundaries (DataLoader workers, Ray actors)
        return (ShardError, (self.shard, self.problem))


def discover_shards(pattern: str) -> List[str]:
    """Sorted absolute paths of the embedding shards matching a glob (or a folder).

    Sidecar id files (``*.ids.npy``) and files of other types are left out.
    """
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*")
    shards = matching_files(pattern, _is_shard_name)
    if not shards:
        raise FileNotFoundError(f"--embeddings {pattern!r} matches no .npy or .parquet shard")
    return shards


def matching_files(pattern: str, keep) -> List[str]:
    """Sorted absolute paths of the files (not folders) a glob matches for which keep(path)."""
    paths = sorted(os.path.abspath(p) for p in glob.glob(pattern, recursive=True))
    return [p for p in paths if keep(p) and not os.path.isdir(p)]


def _is_shard_name(path: str) -> bool:
    if path.endswith(IDS_SUFFIX):
        return False
    return path.endswith(NPY_SUFFIX) or path.endswith(PARQUET_SUFFIXES)


def shard_key(path: str) -> str:
    """A stable, file-name-safe label of a shard: its stem plus a short hash of its path."""
    base = os.path.basename(path)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)
    return f"{stem}-{hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]}"


def save_bf16_npy(path: str, x) -> None:
    """Store a bfloat16 torch tensor as a ``*.bf16.npy`` shard (uint16 bit patterns)."""
    import torch

    if not path.endswith(BF16_SUFFIX):
        raise ValueError(f"a bfloat16 shard's name must end in {BF16_SUFFIX!r}, got {path!r}")
    if not isinstance(x, torch.Tensor) or x.dtype != torch.bfloat16:
        raise TypeError("save_bf16_npy expects a torch.bfloat16 tensor")
    np.save(path, x.contiguous().view(torch.int16).numpy().view(np.uint16))


@dataclass
class Chunk:
    """Rows [start, stop) of one shard: ids (pyarrow array, or None when the shard has no
    ids) and views: (n, K, D) numpy embeddings, or for an image shard (n, K, C, H, W) torch
    image views, with the rows' paths (a list, or None when the shard has none) and the images
    left out as bad, {row: [path, problem]} (their views are zeros; they get no output row)."""

    shard: str
    start: int
    stop: int
    ids: object
    views: object
    bf16: bool = False  # views holds bfloat16 bit patterns as uint16
    paths: object = None
    skipped: object = None

    def kept(self):
        """Boolean mask of the chunk's rows that get an output row; None when all do."""
        if not self.skipped:
            return None
        keep = np.ones(self.stop - self.start, bool)
        keep[[int(row) - self.start for row in self.skipped]] = False
        return keep

    @property
    def nbytes(self) -> int:
        return int(self.views.nbytes)

    def pin_memory(self) -> "Chunk":
        """Called by a DataLoader with pin_memory=True: image views go to pinned memory."""
        self.views = self.views.pin_memory()
        return self


class Shard:
    """An opened, validated shard. Attributes: path, n_rows, k, d, dtype, nbytes, size, id_type."""

    path: str
    n_rows: int
    k: int
    d: int
    dtype: str  # "float32", "float16", "bfloat16" or "float64"
    size: int  # file size in bytes, recorded in the manifest to notice a changed shard
    id_type: object = None  # pyarrow type of the sample ids (see `id_arrow_type`), None without ids

    @property
    def nbytes(self) -> int:
        itemsize = {"float64": 8, "float32": 4}.get(self.dtype, 2)
        return self.n_rows * self.k * self.d * itemsize

    def chunks(self, batch_rows: int) -> Iterator[Tuple[int, int]]:
        """Row ranges [start, stop) of batch_rows rows (the last one shorter)."""
        for start in range(0, self.n_rows, batch_rows):
            yield start, min(start + batch_rows, self.n_rows)

    def read(self, start: int, stop: int) -> Chunk:
        raise NotImplementedError

    def prefetch(self, start: int, stop: int) -> None:
        """Bring rows [start, stop) into memory ahead of use (a hint; may do nothing)."""

    def release(self, start: int, stop: int) -> None:
        """Rows [start, stop) are scored; their memory may be dropped (a hint)."""


def open_shard(path: str) -> Shard:
    """Open and validate a shard; `ShardError` naming it if it is unreadable or malformed."""
    if not os.path.exists(path):
        raise ShardError(path, "file does not exist")
    if not os.access(path, os.R_OK):
        raise ShardError(path, "file is not readable (permission denied)")
    try:
        if path.endswith(NPY_SUFFIX):
            return NpyShard(path)
        if path.endswith(PARQUET_SUFFIXES):
            return ParquetShard(path)
    except ShardError:
        raise
    except OSError as exc:
        raise ShardError(path, f"cannot be read: {exc}") from exc
    raise ShardError(path, "unknown format (expected .npy or .parquet)")


def id_arrow_type(t):
    """The type ids of type t are written as: every integer type as int64, every string type
    as string, any other type as it is."""
    import pyarrow as pa

    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string()
    return t


def pa_type_of(ids: np.ndarray):
    import pyarrow as pa

    return pa.from_numpy_dtype(ids.dtype) if ids.dtype.kind in "iu" else pa.string()


# --- .npy --------------------------------------------------------------------------------


class NpyShard(Shard):
    def __init__(self, path: str):
        self.path = path
        self.size = os.path.getsize(path)
        shape, dtype, offset = _read_npy_header(path)
        self.bf16 = path.endswith(BF16_SUFFIX)
        if self.bf16:
            if dtype != np.dtype("uint16"):
                raise ShardError(path, f"a {BF16_SUFFIX} shard must hold uint16 bit patterns, got dtype {dtype}")
            self.dtype = "bfloat16"
        elif dtype in _NPY_DTYPES:
            self.dtype = _NPY_DTYPES[dtype]
        else:
            hint = f" (store bfloat16 as uint16 in a file named *{BF16_SUFFIX})" if dtype == np.dtype("uint16") else ""
            raise ShardError(path, f"dtype {dtype} is not supported; expected float32 or float16{hint}")
        if len(shape) not in (2, 3):
            raise ShardError(path, f"must be (N, D) or (N, K, D), got shape {shape}")
        self.n_rows = int(shape[0])
        self.k, self.d = (1, int(shape[1])) if len(shape) == 2 else (int(shape[1]), int(shape[2]))
        if self.k == 0 or self.d == 0:
            raise ShardError(path, f"has an empty view or embedding axis, shape {shape}")
        expected = offset + self.n_rows * self.k * self.d * dtype.itemsize
        if self.size < expected:
            raise ShardError(path, f"truncated: header says shape {shape} ({expected} bytes), file has {self.size} bytes")
        if self.size > expected:
            raise ShardError(path, f"corrupt: {self.size - expected} bytes beyond the data of shape {shape}")
        self._offset, self._row_bytes = offset, self.k * self.d * dtype.itemsize
        self._array = self._map(dtype) if self.n_rows else None
        self._ids = self._load_ids()
        self.id_type = None if self._ids is None else id_arrow_type(pa_type_of(self._ids))

    def _map(self, dtype) -> np.ndarray:
        # Our own read-only mapping (not np.load's) so that `release` can madvise it.
        with open(self.path, "rb") as f:
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        count = self.n_rows * self.k * self.d
        return np.frombuffer(self._mmap, dtype=dtype, count=count, offset=self._offset).reshape(self.n_rows, self.k, self.d)

    def _load_ids(self):
        sidecar = self.path[: -len(BF16_SUFFIX if self.bf16 else NPY_SUFFIX)] + IDS_SUFFIX
        if not os.path.exists(sidecar):
            return None
        try:
            ids = np.load(sidecar, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ShardError(self.path, f"its id file {sidecar} cannot be read: {exc}") from exc
        if ids.shape != (self.n_rows,) or ids.dtype.kind not in "iuU":
            raise ShardError(self.path, f"its id file {sidecar} must be ({self.n_rows},) integers or strings, got {ids.shape} {ids.dtype}")
        return ids

    def read(self, start: int, stop: int) -> Chunk:
        import pyarrow as pa

        views = self._array[start:stop]
        ids = pa.array(self._ids[start:stop]) if self._ids is not None else None
        return Chunk(self.path, start, stop, ids, views, bf16=self.bf16)

    def prefetch(self, start: int, stop: int) -> None:
        # Touch one byte per page: the reader thread takes the page faults (disk reads),
        # without copying, so the scoring thread then finds the rows in memory.
        if self._array is None or stop <= start:
            return
        flat = self._array[start:stop].reshape(-1).view(np.uint8)
        int(flat[:: mmap.PAGESIZE].sum()) + int(flat[-1])

    def release(self, start: int, stop: int) -> None:
        # Unmap the pages of scored rows from this process (they stay in the page cache),
        # so resident memory stays at a few chunks however many rows the shard holds.
        if self._array is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        first = (self._offset + start * self._row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        last = self._offset + stop * self._row_bytes
        if stop < self.n_rows:  # keep the page shared with the next chunk
            last = last // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            self._mmap.madvise(mmap.MADV_DONTNEED, first, last - first)


def _read_npy_header(path: str):
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ShardError(path, f"corrupt .npy header: unknown format version {version}")
            offset = f.tell()
    except ShardError:
        raise
    except (ValueError, EOFError, SyntaxError) as exc:
        raise ShardError(path, f"corrupt .npy header: {exc}") from exc
    if dtype.hasobject:
        raise ShardError(path, "holds Python objects; refusing to unpickle")
    if fortran:
        raise ShardError(path, "is Fortran-ordered; save it C-ordered (np.ascontiguousarray)")
    return tuple(shape), dtype, offset


# --- Parquet -----------------------------------------------------------------------------


class ParquetShard(Shard):
    def __init__(self, path: str, id_column: str = "id", embedding_column: str = "embedding"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        self.size = os.path.getsize(path)
        self.columns = (id_column, embedding_column)
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise ShardError(path, f"corrupt or truncated Parquet file: {exc}") from exc
        schema = self._file.schema_arrow
        for column in self.columns:
            if schema.get_field_index(column) < 0:
                raise ShardError(path, f"has no column {column!r} (columns: {schema.names})")
        self.k, self.d, self.dtype = _embedding_layout(path, schema.field(embedding_column).type)
        meta = self._file.metadata
        self.n_rows = int(meta.num_rows)
        self.id_type = id_arrow_type(schema.field(id_column).type)
        self._cached = (None, None)
        self._group_starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])

    def read(self, start: int, stop: int) -> Chunk:
        import pyarrow as pa

        first = int(np.searchsorted(self._group_starts, start, side="right")) - 1
        last = int(np.searchsorted(self._group_starts, stop, side="left"))
        if self._cached[0] != (first, last):  # a row group larger than a chunk is read once
            try:
                groups = self._file.read_row_groups(list(range(first, last)), columns=list(self.columns))
            except (pa.ArrowException, OSError) as exc:
                raise ShardError(self.path, f"corrupt data in rows {start}-{stop}: {exc}") from exc
            self._cached = ((first, last), groups)
        table = self._cached[1]
        table = table.slice(start - int(self._group_starts[first]), stop - start)
        ids = table.column(self.columns[0]).combine_chunks()
        column = table.column(self.columns[1]).combine_chunks()
        if column.null_count:
            raise ShardError(self.path, f"embedding column has null rows in rows {start}-{stop}")
        values = column.flatten().flatten() if self.k > 1 else column.flatten()
        if values.null_count:
            raise ShardError(self.path, f"embedding column has null values in rows {start}-{stop}")
        views = values.to_numpy(zero_copy_only=False).reshape(stop - start, self.k, self.d)
        return Chunk(self.path, start, stop, ids, views)


def _embedding_layout(path: str, t) -> Tuple[int, int, str]:
    import pyarrow as pa

    def fixed(t):
        return pa.types.is_fixed_size_list(t)

    if not fixed(t):
        raise ShardError(path, f"embedding column must be fixed_size_list<float, D> (or nested for K views), got {t}")
    inner = t.value_type
    k, d = (t.list_size, inner.list_size) if fixed(inner) else (1, t.list_size)
    value = inner.value_type if fixed(inner) else inner
    if str(value) not in ("float", "halffloat", "double"):
        raise ShardError(path, f"embedding values must be float32, float16 or float64, got {value}")
    if k == 0 or d == 0:
        raise ShardError(path, f"embedding column has K={k}, D={d}; both must be >= 1")
    return k, d, {"float": "float32", "halffloat": "float16", "double": "float64"}[str(value)]
