"""The job: its plan, its manifest and its output folder, shared by both engines.

A job reads chunks from a source (`sources`: embedding shards or images), turns each into
an output table with a scorer (`scorer`: the arithmetic), and commits it here. Output layout
of a job in OUT:

* ``OUT/scores/part-<shard>-<start>-<stop>.parquet``: one part per chunk of rows, columns
  ``shard`` (dictionary-encoded string: the shard's file name) and ``row`` (int64: the row
  in that shard), which together name every sample; ``id`` when any shard has sample ids
  (a sidecar ``.ids.npy`` or a Parquet id column; null in the parts of a shard without ids);
  ``path`` for image sources (the image's path where it has one, else null); an image left out
  as bad (--skip-bad-images) has no row, and is listed with its path and the reason in the
  manifest and the job's summary; ``score``
  (float64); and, with ``write_norms``, ``norms`` (fixed_size_list<float32, K>, the per-view
  Lp-norms). Every part has the same schema;
* with ``write_embeddings`` (images), ``OUT/embeddings/part-<shard>-<start>-<stop>.npy``:
  the chunk's (n, K, D) float32 view embeddings, and ``.ids.npy`` beside it naming each row
  (its path, else ``<shard>:<row>``); `lpla score --embeddings OUT/embeddings` reads them;
* ``OUT/manifest.json``: which parts are committed (see `manifest`), which shards were bad;
* ``OUT/_SUCCESS``: written once every shard is scored or recorded as bad.

Read it with `read_scores` (the parts the manifest lists, in (shard, row) order), or with
``pandas.read_parquet(OUT / "scores")``; a part not listed in the manifest is never left
behind by a finished job.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..fileio import encode_float, remove_if_present, write_bytes
from .config import CHUNK_DELAY_ENV, DEFAULT_BATCH_ROWS, DEFAULT_P, ENGINES, STATS, ScoreConfig  # noqa: F401 (re-exported)
from .manifest import Manifest
from .scorer import views_tensor  # noqa: F401 (re-exported)
from .shards import Chunk, ShardError, shard_key
from .sources import make_source

def load_calibration(config: ScoreConfig):
    if config.calibration is None:
        return None
    from ..attacks.calibration import LpLACalibration

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
    return calibration.p if calibration is not None else DEFAULT_P


def job_settings(config: ScoreConfig, calibration, p: float, id_type=None,
                 encoder_digest: Optional[Tuple[str, str]] = None) -> dict:
    """What a resumed run must share with the run that started the output folder
    (`encoder_digest`: (settings key, hash) of the encoder's files, from `hash_encoder`, which
    an image job must give)."""
    digest = None
    if calibration is not None and config.stat == "lpla":
        canonical = json.dumps(calibration.to_dict(), sort_keys=True).encode()
        digest = hashlib.sha256(canonical).hexdigest()
    settings = {
        "calibration_sha256": digest,
        "stat": config.stat,
        "p": encode_float(p),
        "batch_rows": config.batch_rows,
        "write_norms": config.write_norms,
        # every part has the same columns: a rerun must not add (or retype) the id column
        "id_type": None if id_type is None else str(id_type),
    }
    if config.images is not None:
        key, value = encoder_digest
        settings.update({key: value}, output=config.output, K=config.K, view_seed=config.view_seed,
                        write_embeddings=config.write_embeddings)
    return settings


# The manifest's key for the hash of the encoder's files, which lets a resumed job refuse an
# encoder that changed. BLAKE3 (a cryptographic hash) took 8 ms for a ResNet-18's 46 MB on one
# core of a 2-core Xeon, SHA-256 34 ms with the CPU's SHA instructions, which was about 6 % of a
# half-second job on the two busy cores. Jobs of earlier releases recorded SHA-256; a job
# resumes with the hash it started with.
BLAKE3, SHA256 = "encoder_blake3", "encoder_sha256"


def encoder_digest_key(previous: Optional[Manifest]) -> str:
    """The hash a job records for its encoder: the one of the job it resumes, else BLAKE3
    (SHA-256 where the blake3 package is missing)."""
    for key in (BLAKE3, SHA256):
        if previous is not None and key in previous.job:
            if key == BLAKE3 and not _has_blake3():
                raise ValueError("the job in --out identified its encoder by its BLAKE3 hash, and the blake3 package "
                                 "is not installed: install it (pip install blake3) to resume, or pass --overwrite")
            return key
    return BLAKE3 if _has_blake3() else SHA256


def hash_encoder(folder: str, key: str = BLAKE3) -> Tuple[str, str]:
    """(key, hex digest) of an encoder folder's config and weights files, hashed as `key` names."""
    from ..encoders.checkpoint import CONFIG_FILE, MODEL_FILE

    paths = [os.path.join(folder, name) for name in (CONFIG_FILE, MODEL_FILE)]
    if key == BLAKE3:
        import blake3

        h = blake3.blake3()
        for path in paths:
            if os.path.getsize(path):  # an empty file cannot be memory-mapped
                h.update_mmap(path)
        return key, h.hexdigest()
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return key, h.hexdigest()


def _has_blake3() -> bool:
    import importlib.util

    return importlib.util.find_spec("blake3") is not None


def load_job_encoder(config: ScoreConfig, device: str = "cpu"):
    """The encoder of an image job, checked against the calibration's dimension."""
    from ..encoders import load_encoder

    try:
        return load_encoder(config.encoder, device=device)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--encoder: {exc}") from exc


# --- the plan and the output folder ------------------------------------------------------


def part_name(shard: str, start: int, stop: int) -> str:
    return f"part-{shard_key(shard)}-{start:012d}-{stop:012d}.parquet"


def embedding_names(part: str) -> Tuple[str, str]:
    """The embedding file and its id sidecar of a part (in OUT/embeddings)."""
    stem = part[: -len(".parquet")]
    return stem + ".npy", stem + ".ids.npy"


def write_outputs(out: str, chunk: Chunk, table, embeddings=None) -> str:
    """Write a chunk's part (and its embeddings first, when kept); returns the part's name.

    Each file goes to a temporary name and is renamed: a half-written file is never visible.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = part_name(chunk.shard, chunk.start, chunk.stop)
    if embeddings is not None:
        _write_embeddings(os.path.join(out, "embeddings"), name, chunk, embeddings)
    sink = pa.BufferOutputStream()
    # Only the shard column repeats: dictionary-encoding ids and scores would only cost time.
    # No compression: scores are about 1 % of the embeddings' size, and snappy took a third
    # of the time of writing a part.
    pq.write_table(table, sink, use_dictionary=["shard"], compression="none")
    write_bytes(os.path.join(out, "scores", name), sink.getvalue().to_pybytes(), durable=True)
    return name


def _write_embeddings(folder: str, part: str, chunk: Chunk, embeddings) -> None:
    import numpy as np

    from ..fileio import replace_atomically

    shard = os.path.basename(chunk.shard)
    names = [p if p is not None else f"{shard}:{chunk.start + i}" for i, p in
             enumerate(chunk.paths or [None] * (chunk.stop - chunk.start))]
    keep = chunk.kept()
    if keep is not None:
        names = [name for name, kept in zip(names, keep) if kept]
    data, ids = embedding_names(part)
    replace_atomically(os.path.join(folder, ids), lambda tmp: np.save(tmp, np.array(names, dtype=str)))
    replace_atomically(os.path.join(folder, data), lambda tmp: np.save(tmp, embeddings))


@dataclass
class JobPlan:
    """The opened shards left to score, their source, the scorer, the manifest, and the bad
    shards found up front."""

    config: ScoreConfig
    source: object
    scorer: object
    manifest: Manifest
    shards: List[object]

    @property
    def scores_dir(self) -> str:
        return os.path.join(self.config.out, "scores")

    def pending(self) -> List[Tuple[object, List[Tuple[int, int]]]]:
        """(shard, chunks not yet committed) for every shard not yet done."""
        todo = []
        for shard in self.shards:
            done = self.manifest.done_starts(shard.path)
            chunks = [c for c in shard.chunks(self.config.batch_rows) if c[0] not in done]
            if chunks:
                todo.append((shard, chunks))
        return todo

    def commit(self, chunk: Chunk, table, embeddings=None) -> None:
        name = write_outputs(self.config.out, chunk, table, embeddings)
        self.manifest.commit_chunk(chunk.shard, chunk.start, chunk.stop, name, chunk.skipped)
        self.manifest.save_if_due()

    def record_bad(self, shard: str, reason: str) -> None:
        for part in self.manifest.mark_bad(shard, reason):
            _remove_part(self.config.out, part)
        self.manifest.save()


def plan_job(config: ScoreConfig, device: Optional[str] = None) -> JobPlan:
    """Load the calibration (and encoder), open and check every shard, open (or resume) the
    manifest.

    Everything that can refuse the job (settings that differ from the job already in OUT, a
    bad shard without --skip-bad-shards) is checked before anything in OUT is touched.
    """
    from .scorer import make_scorer

    manifest_path = os.path.join(config.out, "manifest.json")
    previous = None if config.overwrite or not os.path.exists(manifest_path) else Manifest.load(manifest_path)
    with ThreadPoolExecutor(1) as background:
        # Hashing the encoder's files releases the GIL: it runs while the encoder loads and
        # the shards open.
        digest = None
        if config.images is not None:
            digest = background.submit(hash_encoder, config.encoder, encoder_digest_key(previous))
        calibration = load_calibration(config)
        p = resolve_p(config, calibration)
        encoder = load_job_encoder(config, device or "cpu") if config.images is not None else None
        if encoder is not None and calibration is not None and config.stat == "lpla":
            calibration.check_dim(encoder.embed_dim(config.output), f"the encoder's {config.output} embeddings")
        source = make_source(config, encoder)
        shards, errors = _open_shards(source, calibration)
        id_type = common_id_type(shards)
        scorer = make_scorer(config, calibration, p, id_type, encoder)
        settings = job_settings(config, calibration, p, id_type, digest and digest.result())
    manifest = previous.resume(settings) if previous is not None else Manifest(manifest_path, settings)
    for shard in shards:
        manifest.begin_shard(shard.path, shard.n_rows, shard.size)
    if errors and not config.skip_bad_shards:
        first, *others = errors.values()
        more = "".join(f"\n  also bad: {e}" for e in others)
        raise ShardError(first.shard, f"{first.problem} (fix it, or pass --skip-bad-shards to record bad shards and go on){more}")
    # The job goes ahead: from here on OUT changes.
    folders = [config.out, os.path.join(config.out, "scores")]
    if config.write_embeddings:
        folders.append(os.path.join(config.out, "embeddings"))
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
    if config.overwrite:
        _clear_outputs(config.out)
    for folder in folders:  # left by a run killed mid-write
        _remove_temporaries(folder)
    remove_if_present(os.path.join(config.out, "_SUCCESS"))
    manifest.complete = False
    for path, exc in errors.items():
        for part in manifest.mark_bad(path, exc.problem):
            _remove_part(config.out, part)
    manifest.save()
    return JobPlan(config, source, scorer, manifest, shards)


def _open_shards(source, calibration) -> Tuple[List[object], Dict[str, ShardError]]:
    shards, errors = [], {}
    for path in source.paths():
        try:
            shard = source.open(path)
            d = getattr(shard, "d", None)  # embedding shards
            if d is not None and calibration is not None and calibration.dim is not None and d != calibration.dim:
                raise ShardError(path, f"has D={d}, but the calibration was fitted on D={calibration.dim}")
            if shard.n_rows == 0:
                raise ShardError(path, "is empty (0 rows)")
            shards.append(shard)
        except ShardError as exc:
            errors[path] = exc
    return shards, errors


def common_id_type(shards: List[object]):
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
            remove_if_present(os.path.join(plan.scores_dir, name))
    embeddings_dir = os.path.join(plan.config.out, "embeddings")
    if os.path.isdir(embeddings_dir):
        kept = {n for part in listed for n in embedding_names(part)}
        for name in os.listdir(embeddings_dir):
            if name not in kept:
                remove_if_present(os.path.join(embeddings_dir, name))
    bad = plan.manifest.bad_shards()
    plan.manifest.complete = all(plan.manifest.is_done(s.path) or s.path in bad for s in plan.shards)
    plan.manifest.save()
    if plan.manifest.complete:
        write_bytes(os.path.join(plan.config.out, "_SUCCESS"), b"", durable=True)
    skipped = plan.manifest.skipped_images()
    rows = sum(e.get("n_rows", 0) for e in plan.manifest.shards.values() if e.get("status") == "done")
    rows -= sum(1 for s in skipped if plan.manifest.is_done(s["shard"]))
    return {"rows": rows, "parts": len(listed), "bad_shards": bad, "skipped_images": skipped,
            "complete": plan.manifest.complete}


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


def _clear_outputs(out: str) -> None:
    for path in (os.path.join(out, "manifest.json"), os.path.join(out, "_SUCCESS")):
        remove_if_present(path)
    for sub in ("scores", "embeddings"):
        folder = os.path.join(out, sub)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                remove_if_present(os.path.join(folder, name))


def _remove_part(out: str, part: str) -> None:
    remove_if_present(os.path.join(out, "scores", part))
    for name in embedding_names(part):
        remove_if_present(os.path.join(out, "embeddings", name))


def _remove_temporaries(folder: str) -> None:
    for name in os.listdir(folder):
        if name.startswith(".tmp-"):
            remove_if_present(os.path.join(folder, name))
