"""Atomic file writes (a reader, or a rerun after a crash, sees the old file or the new one,
never half of one), and plain JSON values: an infinite float spelled "inf"."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Callable

import numpy as np


def replace_atomically(path: str, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary path in `path`'s folder, then rename it over `path`.

    The temporary name ends with `path`'s own name, so writers that pick a format from the
    extension (`np.save`, `savefig`) write the right one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            # A failed write() names no file ("[Errno 28] No space left on device"); name the
            # file the user asked for, not the temporary one, so the message can say which.
            error = OSError(exc.errno, exc.strerror or str(exc), path)
            error.action = "writing"
            raise error from exc
        raise


def remove_if_present(path: str) -> None:
    """Delete a file; one that is already gone is fine (a rerun cleaning up after a crash)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def describe_os_error(exc: OSError) -> str:
    """One line for a user: the cause in words and the path, e.g. "no space left on device
    writing runs/x/scores/part-0.parquet" (the action is known for writes made here)."""
    cause = (exc.strerror or str(exc) or type(exc).__name__).strip()
    if cause[:2] != cause[:2].upper():  # "No space left" -> "no space left"; keep "EOF ..."
        cause = cause[0].lower() + cause[1:]
    if exc.filename is None:
        return cause
    action = getattr(exc, "action", None)
    return f"{cause} {action} {exc.filename}" if action else f"{cause}: {exc.filename}"


def write_bytes(path: str, data: bytes, durable: bool = False) -> None:
    """Write bytes atomically; `durable` also fsyncs them before the rename (survives power loss)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())

    replace_atomically(path, write)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def encode_float(x: float):
    """A float for JSON, which has no infinity: inf becomes "inf" (p = inf is common here)."""
    return "inf" if math.isinf(x) else x


def decode_float(x) -> float:
    """The inverse of encode_float (also accepts a float inf and "Infinity")."""
    return math.inf if x in ("inf", "Infinity") else float(x)


def jsonable(x):
    """Plain JSON values: numpy scalars and arrays to Python, inf to "inf" (-inf to "-inf"),
    NaN to null, tuples to lists, dict keys to strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if math.isnan(x) else ("inf" if x == math.inf else ("-inf" if x == -math.inf else x))
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_json(path: str, doc, indent: int = 1, allow_nan: bool = False) -> None:
    """JSON; NaN / Inf are refused unless `allow_nan` (they are not standard JSON)."""
    write_text(path, json.dumps(doc, indent=indent, allow_nan=allow_nan))
