"""The arithmetic of a scoring job: one chunk in, its output table (and embeddings) out.

`ChunkScorer` scores (n, K, D) embeddings with the fused LpLA op (or plain Lp-norms) and
builds the chunk's output table; `EncoderScorer` first embeds (n, K, C, H, W) image views with
an encoder and, when the backbone ends in global average pooling and the released output is
the backbone's, scores its last feature map with the fused tail (`pooled_lpla_score`).
Both return `(table, embeddings)`, embeddings being the (n, K, D) float32 numpy views when
the job keeps them, else None.
"""

from __future__ import annotations

import os
import warnings

from .shards import Chunk, ShardError


class ChunkScorer:
    """Scores chunks of views with the fused op and turns them into output tables.

    id_type: pyarrow type of every part's ``id`` column (None: no such column);
    paths: every part has a ``path`` column (image sources).
    """

    def __init__(self, stat: str, p: float, calibration=None, write_norms: bool = False, id_type=None,
                 paths: bool = False):
        self.stat, self.p, self.calibration, self.write_norms = stat, p, calibration, write_norms
        self.id_type, self.paths = id_type, paths

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
        # One schema in every part, whatever shard it comes from: a reader that takes the
        # schema from the first part it opens (pyarrow, pandas) sees every column.
        if self.id_type is not None:
            columns["id"] = pa.nulls(n, self.id_type) if chunk.ids is None else _cast_ids(chunk, self.id_type)
        if self.paths:
            columns["path"] = pa.nulls(n, pa.string()) if chunk.paths is None else pa.array(chunk.paths, pa.string())
        columns["score"] = pa.array(scores.double().numpy())
        if self.write_norms:
            k = norms.shape[1]
            flat = pa.array(norms.float().reshape(-1).numpy())
            columns["norms"] = pa.FixedSizeListArray.from_arrays(flat, k)
        keep = chunk.kept()  # images left out as bad were scored as zeros: no row for them
        return pa.table(columns) if keep is None else pa.table(columns).filter(pa.array(keep))

    def finish(self, chunk: Chunk, norms, scores):
        """Check a chunk's results (moved to the CPU) and build its table."""
        import torch

        norms, scores = norms.cpu(), scores.cpu()
        keep = chunk.kept()
        if keep is not None:  # a left-out image's results are dropped: never a reason to stop
            drop = torch.from_numpy(~keep)
            norms, scores = norms.masked_fill(drop[:, None], 0.0), scores.masked_fill(drop, 0.0)
        self.check(chunk, norms, scores)
        return self.table(chunk, norms, scores)

    def score_chunk(self, chunk: Chunk, device: str = "cpu"):
        """Score a chunk read from disk on `device`; returns (its output table, None)."""
        views = views_tensor(chunk)
        if device != "cpu":
            views = views.to(device)
        return self.finish(chunk, *self.scores(views)), None


class EncoderScorer:
    """Embeds image views with an encoder, then scores them like `ChunkScorer`.

    Views go through the encoder `forward_rows` images (times K views) at a time. The scorer
    owns its encoder and only runs it forward in eval mode: at the first chunk, on a CPU, it
    gives each convolution its layout for the chunk's image size and moves the weights into
    huge pages, then folds the BatchNorms into the convolutions (`encoders.inference`).
    """

    def __init__(self, encoder, scorer: ChunkScorer, output: str, K: int, write_embeddings: bool = False,
                 forward_rows: int = 64):
        from ..encoders.pooling import split_tail

        self.encoder, self.scorer, self.output, self.K = encoder, scorer, output, int(K)
        self.write_embeddings, self.forward_rows = write_embeddings, forward_rows
        self.tail = split_tail(encoder.backbone) if output == "backbone" else None
        self.prepared = False  # the encoder is made ready at the first chunk, for its device and image size

    def _prepare(self, views, device: str) -> None:
        """At the first chunk, on a CPU: each convolution's layout (`set_conv_layouts`, from one
        view of the chunk), then the weights into huge pages; on any device, last, the
        BatchNorms folded into the weights where they now lie."""
        if self.prepared:
            return
        from ..encoders.inference import fold_batch_norms, place_in_huge_pages, set_conv_layouts

        if device == "cpu":
            set_conv_layouts(self.encoder.backbone, views[:1, 0])
            place_in_huge_pages(self.encoder)  # after the layouts, which copy the weights they change
        fold_batch_norms(self.encoder, in_place=True)
        self.prepared = True

    def score_chunk(self, chunk: Chunk, device: str = "cpu"):
        import torch

        from ..encoders.base import evaluating

        views = chunk.views  # (n, K, C, H, W) float32, pinned on CUDA
        self._prepare(views, device)
        parts = []
        with evaluating(self.encoder):
            for start in range(0, views.shape[0], self.forward_rows):
                batch = views[start:start + self.forward_rows].to(device, non_blocking=True)
                parts.append(self._forward(batch.flatten(0, 1), batch.shape[0]))
        embeddings, norms, scores = (torch.cat(x) for x in zip(*parts))
        table = self.scorer.finish(chunk, norms, scores)
        if not self.write_embeddings:
            return table, None
        embeddings = embeddings.float().cpu().view(views.shape[0], self.K, -1).numpy()
        keep = chunk.kept()
        return table, embeddings if keep is None else embeddings[keep]

    def _forward(self, x, n: int):
        """(embeddings (n*K, D), norms (n, K), scores (n,)) of n samples' K views x."""
        from ..encoders.pooling import pooled_lpla_score

        scorer, calibration = self.scorer, self.scorer.calibration
        if self.tail is not None:
            feature_map, _ = self.tail
            fmap = feature_map(x)
            # The fused tail computes the per-view characteristic's score; the others are
            # scored from the pooled embeddings below.
            if scorer.stat == "lpla" and calibration.aggregation == "sum" and calibration.characteristic == "view":
                calibration.check_dim(fmap.shape[1], "the backbone's embeddings")
                return pooled_lpla_score(fmap, self.K, calibration.p, *calibration.kernel_params(), calibration.log_space)
            from .. import ops

            pooled, _ = ops.pooled_lp_norm(fmap, scorer.p)
            z = pooled
        else:
            z = self.encoder.embed(x, self.output)
        norms, scores = scorer.scores(z.view(n, self.K, -1))
        return z, norms, scores


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


def make_scorer(config, calibration, p: float, id_type=None, encoder=None):
    """The scorer of a job: `ChunkScorer` for embeddings, `EncoderScorer` for images."""
    chunks = ChunkScorer(config.stat, p, calibration, config.write_norms, id_type, paths=config.images is not None)
    if config.images is None:
        return chunks
    # As query_views batches: whole blocks of 32 images, about forward_batch views in all.
    forward_rows = max(32, (config.forward_batch // config.K) // 32 * 32)
    return EncoderScorer(encoder, chunks, config.output, config.K, config.write_embeddings, forward_rows)
