"""The job manifest: the one source of truth of what a scoring job has committed.

``OUT/manifest.json`` holds the job's settings (calibration hash, statistic, p, chunk size)
and, per shard, its size, row count, the chunks whose part files are committed and the images
of those chunks left out as bad (row -> [path, reason]), or the reason the shard was skipped
as bad. A part file is committed in two atomic steps: it is written
to a temporary name and renamed into ``OUT/scores/``, then the manifest (also written to a
temporary file and renamed) lists it. A kill between the two leaves a part the manifest does
not list; the rerun writes it again under the same deterministic name, so every row ends up
in exactly one listed part. The engines save the manifest at most once a second
(`save_if_due`) and when they stop: rewriting a file that lists every part after each part
would cost time quadratic in the number of parts, and a kill only loses the last second's
listings (the rerun redoes those chunks).
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional

from ..fileio import write_bytes

SCHEMA = "lpla_fast.score_manifest"
VERSION = 1
SAVE_INTERVAL_S = 1.0


class Manifest:
    """Committed chunks per shard. `job` is the dict of settings a rerun must match."""

    def __init__(self, path: str, job: dict, shards: Optional[Dict[str, dict]] = None, complete: bool = False):
        self.path = path
        self.job = job
        self.shards: Dict[str, dict] = shards or {}
        self.complete = complete
        self._saved_at = time.monotonic()
        self._unsaved = False

    @classmethod
    def load(cls, path: str) -> "Manifest":
        """The manifest at path, whatever job wrote it."""
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"manifest {path} cannot be read ({exc}); use --overwrite to start over") from exc
        if d.get("schema") != SCHEMA or d.get("version") != VERSION:
            raise ValueError(f"{path} is not a version-{VERSION} score manifest; use --overwrite to start over")
        return cls(path, d["job"], d.get("shards", {}), bool(d.get("complete", False)))

    def resume(self, job: dict) -> "Manifest":
        """This manifest, loaded from the output folder, once checked to be of a job with the
        settings `job`."""
        changed = {k: (self.job.get(k), v) for k, v in job.items() if self.job.get(k) != v}
        if changed:
            diff = "; ".join(f"{k}: was {old!r}, now {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"--out already holds a job with other settings ({diff}); "
                "rerun with the same settings to resume, or pass --overwrite to start over"
            )
        return self

    def save(self) -> None:
        d = {"schema": SCHEMA, "version": VERSION, "job": self.job, "complete": self.complete, "shards": self.shards}
        write_bytes(self.path, json.dumps(d, indent=1, sort_keys=True).encode(), durable=True)
        self._saved_at = time.monotonic()
        self._unsaved = False

    def save_if_due(self, interval: float = SAVE_INTERVAL_S) -> None:
        """Save if chunks were committed since the last save and that save is `interval` s old."""
        if self._unsaved and time.monotonic() - self._saved_at >= interval:
            self.save()

    def save_if_unsaved(self) -> None:
        if self._unsaved:
            self.save()

    # --- per shard ------------------------------------------------------------------------
    def entry(self, shard: str) -> Optional[dict]:
        return self.shards.get(shard)

    def begin_shard(self, shard: str, n_rows: int, size: int) -> None:
        """Register a shard; a shard whose file changed since its chunks were committed is refused."""
        e = self.shards.get(shard)
        if e is not None and e.get("status") != "bad" and (e["n_rows"], e["size"]) != (n_rows, size):
            raise ValueError(
                f"shard {shard} changed since it was partly scored (rows {e['n_rows']} -> {n_rows}, "
                f"bytes {e['size']} -> {size}); pass --overwrite to start over"
            )
        if e is None or e.get("status") == "bad":
            self.shards[shard] = {"status": "pending", "n_rows": n_rows, "size": size, "parts": {}}

    def done_starts(self, shard: str) -> set:
        e = self.shards.get(shard)
        return set() if e is None or e.get("status") == "bad" else {int(s) for s in e["parts"]}

    def commit_chunk(self, shard: str, start: int, stop: int, part: str, skipped: Optional[dict] = None) -> None:
        """List a chunk's part, and the images it left out ({row: [path, reason]})."""
        e = self.shards[shard]
        e["parts"][str(start)] = [stop, part]
        if skipped:
            e.setdefault("skipped", {}).update({str(row): list(v) for row, v in skipped.items()})
        self._unsaved = True
        if sum(stop - int(s) for s, (stop, _) in e["parts"].items()) == e["n_rows"]:
            e["status"] = "done"

    def mark_bad(self, shard: str, reason: str) -> List[str]:
        """Record a bad shard; returns the part files it had committed (to be deleted)."""
        old = self.shards.get(shard) or {}
        parts = [part for _, part in old.get("parts", {}).values()]
        self.shards[shard] = {"status": "bad", "reason": reason}
        return parts

    def is_done(self, shard: str) -> bool:
        e = self.shards.get(shard)
        return e is not None and e.get("status") == "done"

    def part_files(self) -> List[str]:
        return sorted(part for e in self.shards.values() for _, part in e.get("parts", {}).values())

    def skipped_images(self) -> List[dict]:
        """[{"shard", "row", "path", "reason"}] of the images left out, shard by shard, in row order."""
        return [{"shard": shard, "row": int(row), "path": path, "reason": reason}
                for shard, e in sorted(self.shards.items())
                for row, (path, reason) in sorted(e.get("skipped", {}).items(), key=lambda kv: int(kv[0]))]

    def bad_shards(self) -> Dict[str, str]:
        return {s: e["reason"] for s, e in self.shards.items() if e.get("status") == "bad"}
