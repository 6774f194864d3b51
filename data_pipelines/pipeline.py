"""The Grain pipeline: annotation rows -> this process's fixed-shape batches, checkpointable.

    rows     one MapDataset per annotation file: seeded shuffle, repeated with a new shuffle each epoch,
             then mixed by the files' weights (grain.MapDataset.mix)           -> an endless row stream
    batches  the stream cut into global batches of `global_batch` rows; process p of P takes rows
             [p*b, (p+1)*b) of each (b = global_batch / P)                      -> random access by step
    decode   SampleDecoder on each row + collate                               (in worker processes)
    iterate  to_iter_dataset (threads + prefetch buffer), mp_prefetch (worker processes)

Global batch k holds the same rows, in the same order, whatever the number of processes or workers:
process p's part of it is its k-th element. So a run over 2 hosts sees what one host over the same
devices would see, and the iterator position is just "next batch k" (grain's `DatasetIterator` state,
saved with the model by `grain.checkpoint.CheckpointSave`; see `vllama_jax/checkpoints/orbax.py`).

With `cache` set, rows are read pre-decoded from ArrayRecord shards (`data_pipelines/cache.py`)
instead of decoding media: the same indices, so the same samples in the same order.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple

import grain

from data_pipelines.annotations import read_annotation_file
from data_pipelines.records import cache_shards, deserialize
from data_pipelines.samples import SampleDecoder, SampleSpec, collate
from vllama_jax.models.sequence import default_buckets


@dataclasses.dataclass(frozen=True)
class Source:
    """One annotation file (or its cache shard) and its mixing weight."""

    path: str
    weight: Optional[float] = None  # None (for every source): each row equally likely, as concatenated
    audio_from_video: bool = False


def annotation_path(folder: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(folder, path)


def row_datasets(sources: Sequence[Source], folder: str, cache: Optional[str] = None) -> List[grain.MapDataset]:
    """One random-access MapDataset per source: annotation rows, or their pre-decoded cache records."""
    out = []
    for i, s in enumerate(sources):
        if cache is not None:
            out.append(grain.MapDataset.source(grain.sources.ArrayRecordDataSource(cache_shards(cache, i))))
        else:
            rows = read_annotation_file(annotation_path(folder, s.path), s.audio_from_video)
            if not rows:
                raise ValueError(f"annotation file {s.path} has no rows")
            out.append(grain.MapDataset.source(rows))
    return out


def mixing_weights(sources: Sequence[Source], datasets: Sequence[grain.MapDataset]) -> List[float]:
    given = [s.weight is not None for s in sources]
    if any(given) and not all(given):
        raise ValueError("data.annotations: give a weight to every file or to none (none: mixed by row count)")
    return [s.weight if s.weight is not None else float(len(d)) for s, d in zip(sources, datasets)]


def row_stream(datasets: Sequence[grain.MapDataset], weights: Sequence[float], seed: int) -> grain.MapDataset:
    """An endless stream: each file shuffled (a new order every epoch), then mixed by weight."""
    streams = [ds.shuffle(seed + i).repeat() for i, ds in enumerate(datasets)]
    if len(streams) == 1:
        return streams[0]
    return grain.MapDataset.mix(streams, list(weights))


@dataclasses.dataclass(frozen=True)
class ProcessSlice:
    """This process's rows of a global batch (a class, not a lambda, so it pickles into workers)."""

    start: int
    stop: int

    def __call__(self, rows: list) -> list:
        return rows[self.start:self.stop]


@dataclasses.dataclass
class BatchDecoder:
    """`[row, ...] -> batch`: decode every row of this process's part of a global batch and collate."""

    decoder: SampleDecoder
    buckets: Tuple[int, ...]
    num_frames: int
    image_size: int
    has_audio_tower: bool
    from_cache: bool = False

    def __call__(self, rows: list) -> dict:
        if self.from_cache:
            samples = [deserialize(r) for r in rows]
        else:
            samples = [self.decoder(r) for r in rows]
        return collate(samples, self.buckets, self.num_frames, self.image_size, self.has_audio_tower)


class TrainData:
    """This process's batches for one training run.

    `batches[k]` is this process's part of global batch k (a dict of numpy arrays, see
    `samples.collate`); `iterator(start)` yields them from batch `start` on with prefetching."""

    def __init__(self, sources: Sequence[Source], spec: SampleSpec, global_batch: int, *, seed: int = 0,
                 buckets: Sequence[int] = (), process_index: int = 0, process_count: int = 1,
                 cache: Optional[str] = None, worker_count: int = 0, read_threads: int = 2, prefetch: int = 2):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} does not split over {process_count} processes")
        self.local_batch = global_batch // process_count
        datasets = row_datasets(sources, spec.data_folder, cache)
        self.num_rows = sum(len(d) for d in datasets)
        self.buckets = tuple(buckets) or default_buckets(spec.model_max_length)
        stream = row_stream(datasets, mixing_weights(sources, datasets), seed)
        # Cut the stream into global batches, each as this process's slice of rows, as a list.
        p, b = process_index, self.local_batch
        per_global = stream.batch(global_batch, drop_remainder=True, batch_fn=list)
        local_rows = per_global.map(ProcessSlice(p * b, (p + 1) * b))
        self.batches = local_rows.map(BatchDecoder(SampleDecoder(spec), self.buckets, spec.num_frames,
                                                   spec.image_size, spec.has_audio_tower, cache is not None))
        self.worker_count, self.read_threads, self.prefetch = worker_count, read_threads, prefetch

    def iterator(self, start: int = 0) -> grain.DatasetIterator:
        """Batches from `start` on: decoded in `read_threads` threads (and `worker_count` processes)."""
        ds = self.batches[start:] if start else self.batches
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.read_threads, prefetch_buffer_size=self.prefetch))
        if self.worker_count > 0:
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count,
                                                             per_worker_buffer_size=self.prefetch))
        return iter(it)
