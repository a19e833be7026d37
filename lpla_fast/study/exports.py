"""Exports for auditing stacks: every per-sample score as one long Parquet table, and each
headline attack's ROC and scores in ML Privacy Meter's npz layout.

- `scores.parquet`: one row per (record, sample): the record's keys (framework, backbone,
  width, output, study, attack, variant, level, k, p, defense, evaluated, seed), then `sample`
  (the dataset index), `is_member` and `score` (larger = more likely a member). Repeated
  strings are dictionary-encoded. `pandas.read_parquet` reads it as a DataFrame ready for
  per-sample analyses (group by any key column, threshold `score`, compare with `is_member`).
- `roc/<framework>-<architecture>-<output>[-<defense>]-K<k>-<variant>-seed<seed>.npz`, per
  record of the "main" and "references" studies: `fpr`, `tpr` (the full empirical ROC,
  `metrics.roc_curve`), `auc` (a 0-d float), `scores`, `memberships` (0/1 int8) and `sample`.

Only records that carry their per-sample scores (`AttackRecord.samples`, kept in memory by
the run, never in results.json) are exported.
"""

from __future__ import annotations

import os
import re
from typing import List

import numpy as np

from .. import metrics
from ..fileio import replace_atomically
from .results import SCORES_FILE, AttackRecord, Results
from .stats import variant

ROC_FOLDER = "roc"
NPZ_STUDIES = ("main", "references")
STRING_COLUMNS = ("framework", "backbone", "output", "study", "attack", "variant", "level", "defense", "evaluated")


def _column_values(record: AttackRecord, name: str):
    return variant(record) if name == "variant" else getattr(record, name)


def _dictionary_column(values: list, lengths: np.ndarray):
    """A dictionary-encoded string column: one value per record, repeated over its rows (None = null)."""
    import pyarrow as pa

    dictionary = sorted({v for v in values if v is not None})
    code = {v: i for i, v in enumerate(dictionary)}
    indices = np.repeat(np.array([code.get(v, -1) for v in values], np.int32), lengths)
    return pa.DictionaryArray.from_arrays(pa.array(indices, mask=indices < 0), pa.array(dictionary, pa.string()))


def _repeated(values: list, lengths: np.ndarray, dtype):
    import pyarrow as pa

    mask = np.repeat(np.array([v is None for v in values]), lengths)
    filled = np.repeat(np.array([0 if v is None else v for v in values], dtype), lengths)
    return pa.array(filled, mask=mask if mask.any() else None)


def scores_table(records: List[AttackRecord]):
    """The pyarrow Table of scores.parquet for the records that carry per-sample scores."""
    import pyarrow as pa

    kept = [r for r in records if r.samples is not None and r.metrics]
    lengths = np.array([len(r.samples.score) for r in kept], np.int64)
    columns = {name: _dictionary_column([_column_values(r, name) for r in kept], lengths) for name in STRING_COLUMNS}
    columns["width"] = _repeated([r.width for r in kept], lengths, np.int64)
    columns["k"] = _repeated([r.k for r in kept], lengths, np.int64)
    columns["p"] = _repeated([r.p for r in kept], lengths, np.float64)
    columns["seed"] = _repeated([r.seed for r in kept], lengths, np.int64)

    def concat(name, dtype):
        parts = [np.asarray(getattr(r.samples, name), dtype) for r in kept]
        return pa.array(np.concatenate(parts) if parts else np.zeros(0, dtype))

    columns["sample"] = concat("sample", np.int64)
    columns["is_member"] = concat("is_member", bool)
    columns["score"] = concat("score", np.float64)
    order = ["framework", "backbone", "width", "output", "study", "attack", "variant", "level", "k", "p", "defense",
             "evaluated", "seed", "sample", "is_member", "score"]
    return pa.table({name: columns[name] for name in order})


def write_scores(records: List[AttackRecord], path: str, table_of=scores_table) -> None:
    """scores.parquet (atomically); `table_of(records)` builds its table (`scores_table`, or a
    caller's own with more columns)."""
    import pyarrow.parquet as pq

    table = table_of(records)
    replace_atomically(path, lambda tmp: pq.write_table(table, tmp, use_dictionary=True, compression="zstd"))


def npz_name(record: AttackRecord) -> str:
    """roc/ file name of a record: every key that tells two headline records apart."""
    parts = [record.framework, record.architecture or "embeddings", record.output]
    if record.defense:
        parts.append(record.defense)
    parts += [f"K{record.k}", variant(record).replace("/", "-")]
    if record.p is not None and record.p != 2.0:
        parts.append(f"p{record.p:g}")
    parts.append(f"seed{record.seed}")
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "-".join(str(p) for p in parts)) + ".npz"


def write_roc_npz(record: AttackRecord, path: str) -> None:
    """One record in ML Privacy Meter's npz layout (fpr, tpr, auc, scores, memberships) plus `sample`."""
    s = record.samples
    scores = np.asarray(s.score, np.float64)
    members = np.asarray(s.is_member, bool)
    fpr, tpr = metrics.roc_curve(scores, members)
    arrays = dict(fpr=fpr, tpr=tpr, auc=np.float64(metrics.roc_auc(scores, members)), scores=scores,
                  memberships=members.astype(np.int8), sample=np.asarray(s.sample, np.int64))
    replace_atomically(path, lambda tmp: np.savez(tmp, **arrays))


def write_exports(results: Results, out_dir: str, scores_table_of=scores_table) -> List[str]:
    """scores.parquet (its table built by `scores_table_of`) and roc/*.npz into `out_dir`; returns
    the written paths (none when no record carries its per-sample scores, e.g. results read back
    from results.json)."""
    with_scores = [r for r in results.records if r.samples is not None and r.metrics]
    if not with_scores:
        return []
    written = [os.path.join(out_dir, SCORES_FILE)]
    write_scores(with_scores, written[0], scores_table_of)
    for r in (r for r in with_scores if r.study in NPZ_STUDIES):
        path = os.path.join(out_dir, ROC_FOLDER, npz_name(r))
        n = 1
        while path in written:  # records differing only in a parameter the name leaves out
            n += 1
            path = os.path.join(out_dir, ROC_FOLDER, npz_name(r)[:-4] + f"-{n}.npz")
        write_roc_npz(r, path)
        written.append(path)
    return written
