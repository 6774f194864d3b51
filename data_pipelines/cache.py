"""Pre-decoded samples in ArrayRecord shards, for hosts whose CPUs cannot decode video fast enough.

    vllama-jax cache --config launch/configs/video_finetune.yaml --out /data/cache_vft
    vllama-jax train --config launch/configs/video_finetune.yaml --set data.cache=/data/cache_vft

Every row of every annotation file is decoded once (media, template, tokens; the same `SampleDecoder`
as training) and written, in row order, to `<out>/<file index>/shard-XXXXX.array_record`; a bad row is
written as the empty sample it becomes in training. Training then reads record i where it would
have decoded row i, so the cache is a drop-in: same shuffle, same samples, same bad-row counts.
Frames are stored as float16 by default (half the bytes; about 1e-3 relative rounding of the
normalised pixels), `--dtype float32` keeps them exact. `manifest.json` records the annotation files
(paths and sha256) and the pre-processing; training refuses a cache made from other files or from an
earlier version of them. The record format: records.py.
"""
from __future__ import annotations

import dataclasses
import json
import os

import grain
import numpy as np

from data_pipelines.pipeline import annotation_path, row_datasets
from data_pipelines.records import MANIFEST, serialize
from data_pipelines.samples import SampleDecoder
from vllama_jax.evaluation.reproducibility import sha256_file

def write_cache(sources, spec, out: str, *, records_per_shard: int = 1024, dtype: str = "float16",
                worker_count: int = 0, read_threads: int = 4, media_cache=None) -> dict:
    """Decode every row of `sources` (pipeline.Source list) with `spec` (samples.SampleSpec) into `out`.

    `media_cache` (a MediaCache): decoded clips kept across rows and calls, so caches of several phases
    about the same clips decode each once (without worker processes: workers keep no shared cache)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    counts = []
    for i, rows in enumerate(row_datasets(sources, spec.data_folder)):
        folder = os.path.join(out, f"{i:03d}")
        os.makedirs(folder, exist_ok=True)
        decoded = rows.map(SampleDecoder(spec, media_cache)).to_iter_dataset(grain.ReadOptions(num_threads=read_threads))
        if worker_count:
            decoded = decoded.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
        writer, n, bad = None, 0, 0
        for sample in decoded:
            if n % records_per_shard == 0:
                if writer is not None:
                    writer.close()
                writer = ArrayRecordWriter(os.path.join(folder, f"shard-{n // records_per_shard:05d}.array_record"),
                                           "group_size:1")  # one record per chunk: cheap random access
            writer.write(serialize(sample, np.dtype(dtype)))
            n, bad = n + 1, bad + bool(sample["bad"])
        if writer is not None:
            writer.close()
        counts.append({"rows": n, "bad": bad})
    manifest = {"sources": [s.path for s in sources],
                "sha256": [sha256_file(annotation_path(spec.data_folder, s.path)) for s in sources],
                "counts": counts, "dtype": dtype, "spec": dataclasses.asdict(spec)}
    with open(os.path.join(out, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest
