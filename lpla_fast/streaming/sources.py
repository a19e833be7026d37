"""The inputs of a scoring job, behind one interface that yields chunks.

A source lists its shards (`paths`), opens and checks one (`open`, raising `ShardError`),
reads one chunk of an opened shard (`load`), and streams the chunks a job has left
(`stream`), in order, each as ``(shard, Chunk)`` or ``(shard, ShardError)``:

* `EmbeddingSource`: embedding shards (see `shards`); a chunk is (n, K, D) rows, read
  without copying (memory map) in the engine's reader thread;
* `ImageSource`: image shards (see `images`); a chunk is (n, K, C, H, W) float32 views, view 1
  the clean image and views 2..K the random views `encoders.query_views` draws for the same
  images, K and seed (a sample's views depend on its row in its shard). An image that cannot
  be decoded stops the shard, or with `skip_bad_images` is listed in the chunk's `skipped`
  (its row keeps its place, so every other row keeps its views). Decoding and view
  drawing run in worker processes (a torch DataLoader), overlapped with the forward pass;
  on CUDA the views arrive in pinned memory.
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

from .config import ScoreConfig
from .shards import Chunk, Shard, ShardError, discover_shards, open_shard


class EmbeddingSource:
    def __init__(self, pattern: str):
        self.pattern = pattern

    def paths(self) -> List[str]:
        return discover_shards(self.pattern)

    def open(self, path: str) -> Shard:
        return open_shard(path)

    def load(self, shard: Shard, start: int, stop: int) -> Chunk:
        return shard.read(start, stop)

    def stream(self, pending) -> Iterator[Tuple[Shard, object]]:
        for shard, chunks in pending:
            try:
                for start, stop in chunks:
                    chunk = shard.read(start, stop)
                    shard.prefetch(start, stop)
                    yield shard, chunk
            except ShardError as exc:
                yield shard, exc


class ImageSource:
    """Image shards, turned into K views per image for an encoder of input size image_size."""

    def __init__(self, source: str, image_size: int, K: int, seed: int, policy: str, workers: int = 1,
                 pin_memory: bool = False, skip_bad_images: bool = False):
        self.source, self.image_size, self.K, self.seed, self.policy = source, image_size, int(K), seed, policy
        self.workers, self.pin_memory, self.skip_bad_images = workers, pin_memory, skip_bad_images

    def paths(self) -> List[str]:
        from .images import discover_image_shards

        return discover_image_shards(self.source)

    def open(self, path: str):
        from .images import open_image_shard

        return open_image_shard(path, self.image_size)

    def load(self, shard, start: int, stop: int) -> Chunk:
        """Read, decode and draw the views of rows [start, stop) (start a multiple of 32)."""
        from ..encoders.views import draw_views
        from .images import to_float_images

        rows = shard.read_rows(start, stop)
        if not self.skip_bad_images:
            rows.check(shard.path, start, " (pass --skip-bad-images to leave bad images out and score the others)")
        skipped = {row: [rows.path(row, start), problem] for row, problem in rows.bad.items()}
        views = draw_views(to_float_images(rows.images), start, self.K, self.policy, self.seed, include_clean=True)
        return Chunk(shard.path, start, stop, None, views.contiguous(), paths=rows.paths, skipped=skipped or None)

    def stream(self, pending) -> Iterator[Tuple[object, object]]:
        from torch.utils.data import DataLoader

        tasks = [(shard, start, stop) for shard, chunks in pending for start, stop in chunks]
        if not tasks:
            return
        loader = DataLoader(_Chunks(self, tasks), batch_size=None, shuffle=False, num_workers=self.workers,
                            pin_memory=self.pin_memory, worker_init_fn=_one_thread,
                            prefetch_factor=2 if self.workers else None, persistent_workers=False)
        bad = set()
        for (shard, _, _), item in zip(tasks, loader):
            if shard.path in bad:
                continue  # the rest of a bad shard: read ahead, dropped here
            if isinstance(item, ShardError):
                bad.add(shard.path)
            yield shard, item


class _Chunks:
    """Map-style dataset: item i is task i's Chunk, or the ShardError that stopped it."""

    def __init__(self, source: ImageSource, tasks):
        self.source, self.tasks = source, tasks

    def __len__(self):
        return len(self.tasks)

    def __getitem__(self, i):
        shard, start, stop = self.tasks[i]
        try:
            return self.source.load(shard, start, stop)
        except ShardError as exc:
            return exc


def _one_thread(_worker_id):
    # A worker draws one chunk's views at a time; torch's own threads would only compete with
    # the forward pass for the same cores.
    import torch

    torch.set_num_threads(1)


def make_source(config: ScoreConfig, encoder=None):
    """The source of a job: its embeddings, or its images for `encoder`."""
    if config.images is None:
        return EmbeddingSource(config.embeddings)
    policy = encoder.config.augmentation
    # The local engine sets workers and pinning from `tuning.choose_threads` before it streams.
    workers = 1 if config.workers is None else config.workers
    return ImageSource(config.images, encoder.config.image_size, config.K, config.view_seed, policy,
                       workers, pin_memory=config.device != "cpu",
                       skip_bad_images=config.skip_bad_images)
