"""What both engines share: the job's settings, its plan, chunk scoring and part files.

Output layout of a job in OUT:

* ``OUT/scores/part-<shard>-<start>-<stop>.parquet``: one part per chunk of rows, columns
  ``shard`` (dictionary-encoded string: the shard's file name) and ``row`` (int64: the row
  in that shard), which together name every sample; ``id`` when the shard has sample ids
  (a sidecar ``.ids.npy`` or a Parquet id column); ``score`` (float64); and, with
  ``write_norms``, ``norms`` (fixed_size_list<float32, K>, the per-view Lp-norms);
* ``OUT/manifest.json``: which parts are committed (see `manifest`), which shards were bad;
* ``OUT/_SUCCESS``: written once every shard is scored or recorded as bad.

Read it with `read_scores` (the parts the manifest lists, in (shard, row) order), or with
``pandas.read_parquet(OUT / "scores")``; a part not listed in the manifest is never left
behind by a finished job.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..fileio import encode_float, write_bytes
from .manifest import Manifest
from .shards import Chunk, Shard, ShardError, discover_shards, open_shard, shard_key

STATS = ("lpla", "norm")
ENGINES = ("local", "ray")
DEFAULT_BATCH_ROWS = 131072
CHUNK_DELAY_ENV = "LPLA_SCORE_CHUNK_DELAY"  # seconds to sleep per chunk; lets tests kill a run mid-way


@dataclass
class ScoreConfig:
    """Settings of one `lpla score` job (the CLI flags, one to one)."""

    embeddings: str
    out: str
    calibration: Optional[str] = None
    stat: str = "lpla"
    p: Optional[float] = None
    batch_rows: int = DEFAULT_BATCH_ROWS
    device: str = "cpu"
    engine: str = "local"
    address: Optional[str] = None
    skip_bad_shards: bool = False
    write_norms: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.stat not in STATS:
            raise ValueError(f"--stat must be one of {STATS}, got {self.stat!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {ENGINES}, got {self.engine!r}")
        if self.batch_rows < 1:
            raise ValueError(f"--batch-rows must be >= 1, got {self.batch_rows}")
        if self.p is not None and (math.isnan(self.p) or self.p <= 0):
            raise ValueError(f"--p must be in (0, inf], got {self.p}")
        if self.stat == "lpla" and self.calibration is None:
            raise ValueError("--stat lpla needs --calibration (a file saved by `lpla attack`)")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"--device must be cpu or cuda[:i], got {self.device!r}")


def load_calibration(config: ScoreConfig):
    if config.calibration is None:
        return None
    from ..calibration import LpLACalibration

    if not os.path.exists(config.calibration):
        raise FileNotFoundError(f"--calibration {config.calibration} does not exist")
    return LpLACalibration.load(config.calibration)


def resolve_p(config: ScoreConfig, calibration) -> float:
    if config.stat == "lpla":
        if config.p is not None and config.p != calibration.p:
            raise ValueError(f"--p {config.p} differs from the calibration's p={calibration.p}; LpLA uses the calibration's")
        return calibration.p
    if config.p is not None:
        return config.p
    return calibration.p if calibration is not None else 2.0


def job_settings(config: ScoreConfig, calibration, p: float, id_type=None) -> dict:
    """What a resumed run must share with the run that started the output folder."""
    digest = None
    if calibration is not None and config.stat == "lpla":
        canonical = json.dumps(calibration.to_dict(), sort_keys=True).encode()
        digest = hashlib.sha256(canonical).hexdigest()
    return {
        "calibration_sha256": digest,
        "stat": config.stat,
        "p": encode_float(p),
        "batch_rows": config.batch_rows,
        "write_norms": config.write_norms,
        # every part has the same columns: a rerun must not add (or retype) the id column
        "id_type": None if id_type is None else str(id_type),
    }


# --- scoring one chunk -------------------------------------------------------------------


class ChunkScorer:
    """Scores chunks of views with the fused op and turns them into output tables."""

    def __init__(self, stat: str, p: float, calibration=None, write_norms: bool = False, id_type=None):
        self.stat, self.p, self.calibration, self.write_norms = stat, p, calibration, write_norms
        self.id_type = id_type  # pyarrow type of the id column of every part; None: no id column

    def scores(self, views):
        """(norms (N, K), scores (N,)) of a (N, K, D) tensor, on its device."""
        from .. import ops

        if self.stat == "lpla":
            return self.calibration.score(views)
        norms = ops.lp_norm(views, self.p)
        return norms, norms.mean(dim=1)

    def check(self, chunk: Chunk, norms, scores) -> None:
        """Refuse silently wrong output: NaN / Inf rows and non-finite scores name shard and row."""
        import torch

        # A NaN or Inf norm always gives a non-finite score (both statistics propagate it), so
        # finite scores clear the chunk with one pass over N values instead of N * K.
        if bool(torch.isfinite(scores).all()):
            return
        bad = ~torch.isfinite(norms).all(dim=1)
        if bool(bad.any()):
            rows = (torch.nonzero(bad).flatten()[:5] + chunk.start).tolist()
            raise ShardError(chunk.shard, f"{int(bad.sum())} rows in rows {chunk.start}-{chunk.stop} hold NaN or Inf values (first: {rows})")
        bad = ~torch.isfinite(scores)
        if bool(bad.any()):
            rows = (torch.nonzero(bad).flatten()[:5] + chunk.start).tolist()
            raise ShardError(chunk.shard, f"{int(bad.sum())} rows have a non-finite score (first: {rows}); an all-zero embedding under a log-space calibration?")

    def table(self, chunk: Chunk, norms, scores):
        import numpy as np
        import pyarrow as pa

        n = chunk.stop - chunk.start
        # Integer locations, not "<file>:<row>" strings: formatting and encoding those took
        # as long as scoring the rows.
        shard = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([os.path.basename(chunk.shard)]), safe=False)
        columns = {"shard": shard, "row": pa.array(np.arange(chunk.start, chunk.stop, dtype=np.int64))}
        if self.id_type is not None:
            # One schema in every part, whatever shard it comes from: a reader that takes the
            # schema from the first part it opens (pyarrow, pandas) sees every column.
            columns["id"] = pa.nulls(n, self.id_type) if chunk.ids is None else _cast_ids(chunk, self.id_type)
        columns["score"] = pa.array(scores.double().numpy())
        if self.write_norms:
            k = norms.shape[1]
            flat = pa.array(norms.float().reshape(-1).numpy())
            columns["norms"] = pa.FixedSizeListArray.from_arrays(flat, k)
        return pa.table(columns)

    def score_chunk(self, chunk: Chunk, device: str = "cpu"):
        """Score a chunk read from disk on `device`; returns its output table."""
        views = views_tensor(chunk)
        if device != "cpu":
            views = views.to(device)
        norms, scores = self.scores(views)
        norms, scores = norms.cpu(), scores.cpu()
        self.check(chunk, norms, scores)
        return self.table(chunk, norms, scores)


def _cast_ids(chunk: Chunk, id_type):
    import pyarrow as pa

    try:
        return chunk.ids.cast(id_type)
    except (pa.ArrowException, ValueError) as exc:
        raise ShardError(chunk.shard, f"its ids of type {chunk.ids.type} cannot be written as {id_type}: {exc}") from exc


def views_tensor(chunk: Chunk):
    """A torch view (no copy) of a chunk's (n, K, D) rows; bfloat16 bits are reinterpreted."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")  # the kernels only read
        t = torch.from_numpy(chunk.views)
    return t.view(torch.bfloat16) if chunk.bf16 else t


# --- the plan and the output folder ------------------------------------------------------


def part_name(shard: str, start: int, stop: int) -> str:
    return f"part-{shard_key(shard)}-{start:012d}-{stop:012d}.parquet"


def write_part(scores_dir: str, name: str, table) -> None:
    """Write a part to a temporary name, then rename it: a half-written part is never visible."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    # Only the shard column repeats: dictionary-encoding ids and scores would only cost time.
    # No compression: scores are about 1 % of the embeddings' size, and snappy took a third
    # of the time of writing a part.
    pq.write_table(table, sink, use_dictionary=["shard"], compression="none")
    write_bytes(os.path.join(scores_dir, name), sink.getvalue().to_pybytes(), durable=True)


@dataclass
class JobPlan:
    """The opened shards left to score, the manifest, and the bad shards found up front."""

    config: ScoreConfig
    scorer: ChunkScorer
    manifest: Manifest
    shards: List[Shard]
    scores_dir: str

    def pending(self) -> List[Tuple[Shard, List[Tuple[int, int]]]]:
        """(shard, chunks not yet committed) for every shard not yet done."""
        todo = []
        for shard in self.shards:
            done = self.manifest.done_starts(shard.path)
            chunks = [c for c in shard.chunks(self.config.batch_rows) if c[0] not in done]
            if chunks:
                todo.append((shard, chunks))
        return todo

    def record_bad(self, shard: str, reason: str) -> None:
        for part in self.manifest.mark_bad(shard, reason):
            _remove(os.path.join(self.scores_dir, part))
        self.manifest.save()


def plan_job(config: ScoreConfig) -> JobPlan:
    """Load the calibration, open and validate every shard, open (or resume) the manifest.

    Everything that can refuse the job (settings that differ from the job already in OUT, a
    bad shard without --skip-bad-shards) is checked before anything in OUT is touched.
    """
    calibration = load_calibration(config)
    p = resolve_p(config, calibration)
    paths = discover_shards(config.embeddings)
    shards, errors = _open_shards(paths, calibration)
    id_type = common_id_type(shards)
    scorer = ChunkScorer(config.stat, p, calibration, config.write_norms, id_type)
    settings = job_settings(config, calibration, p, id_type)
    manifest = Manifest.open(os.path.join(config.out, "manifest.json"), settings, overwrite=config.overwrite)
    for shard in shards:
        manifest.begin_shard(shard.path, shard.n_rows, shard.size)
    if errors and not config.skip_bad_shards:
        first, *others = errors.values()
        more = "".join(f"\n  also bad: {e}" for e in others)
        raise ShardError(first.shard, f"{first.problem} (fix it, or pass --skip-bad-shards to record bad shards and go on){more}")
    # The job goes ahead: from here on OUT changes.
    scores_dir = os.path.join(config.out, "scores")
    os.makedirs(config.out, exist_ok=True)
    if config.overwrite:
        _clear_outputs(config.out, scores_dir)
    os.makedirs(scores_dir, exist_ok=True)
    for folder in (config.out, scores_dir):  # left by a run killed mid-write
        _remove_temporaries(folder)
    _remove(os.path.join(config.out, "_SUCCESS"))
    manifest.complete = False
    for path, exc in errors.items():
        for part in manifest.mark_bad(path, exc.problem):
            _remove(os.path.join(scores_dir, part))
    manifest.save()
    return JobPlan(config, scorer, manifest, shards, scores_dir)


def _open_shards(paths: List[str], calibration) -> Tuple[List[Shard], Dict[str, ShardError]]:
    shards, errors = [], {}
    for path in paths:
        try:
            shard = open_shard(path)
            if calibration is not None and calibration.dim is not None and shard.d != calibration.dim:
                raise ShardError(path, f"has D={shard.d}, but the calibration was fitted on D={calibration.dim}")
            if shard.n_rows == 0:
                raise ShardError(path, "is empty (0 rows)")
            shards.append(shard)
        except ShardError as exc:
            errors[path] = exc
    return shards, errors


def common_id_type(shards: List[Shard]):
    """The one type of the ``id`` column of every part: the shards' id type when they agree,
    string when they differ, None (no ``id`` column) when no shard has ids."""
    import pyarrow as pa

    types = {s.id_type for s in shards if s.id_type is not None}
    if not types:
        return None
    return types.pop() if len(types) == 1 else pa.string()


def finish_job(plan: JobPlan) -> Dict[str, object]:
    """Drop stray parts, mark the job complete, write _SUCCESS; returns a summary."""
    listed = set(plan.manifest.part_files())
    for name in os.listdir(plan.scores_dir):
        if name not in listed:
            _remove(os.path.join(plan.scores_dir, name))
    bad = plan.manifest.bad_shards()
    plan.manifest.complete = all(plan.manifest.is_done(s.path) or s.path in bad for s in plan.shards)
    plan.manifest.save()
    if plan.manifest.complete:
        write_bytes(os.path.join(plan.config.out, "_SUCCESS"), b"", durable=True)
    rows = sum(e.get("n_rows", 0) for e in plan.manifest.shards.values() if e.get("status") == "done")
    return {"rows": rows, "parts": len(listed), "bad_shards": bad, "complete": plan.manifest.complete}


def read_scores(out: str):
    """The scores of the job in `out` as one pyarrow table: shard by shard, each shard's rows
    in order.

    Reads the parts the manifest lists (never a stray part of a killed run). Parts of shards
    without sample ids get a null ``id`` when other shards have ids.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(out, "manifest.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{out} holds no scoring job (no manifest.json)")
    names = Manifest.load(path).part_files()  # part names sort by shard, then first row
    if not names:
        return pa.table({"shard": pa.array([], pa.dictionary(pa.int32(), pa.string())), "row": pa.array([], pa.int64()),
                         "score": pa.array([], pa.float64())})
    return pa.concat_tables([pq.read_table(os.path.join(out, "scores", name)) for name in names], promote_options="default")


def _clear_outputs(out: str, scores_dir: str) -> None:
    for path in (os.path.join(out, "manifest.json"), os.path.join(out, "_SUCCESS")):
        _remove(path)
    if os.path.isdir(scores_dir):
        for name in os.listdir(scores_dir):
            _remove(os.path.join(scores_dir, name))


def _remove_temporaries(folder: str) -> None:
    for name in os.listdir(folder):
        if name.startswith(".tmp-"):
            _remove(os.path.join(folder, name))


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

