"""Pre-decoded samples in ArrayRecord shards, for hosts whose CPUs cannot decode video fast enough.

    python -m data_pipelines.cache --config launch/configs/video_finetune.yaml --out /data/cache_vft
    vllama-jax train --config launch/configs/video_finetune.yaml --set data.cache=/data/cache_vft

Every row of every annotation file is decoded once (media, template, tokens; the same `SampleDecoder`
as training) and written, in row order, to `<out>/<file index>/shard-XXXXX.array_record`; a bad row is
written as the empty sample it becomes in training. Training then reads record i where it would
have decoded row i, so the cache is a drop-in: same shuffle, same samples, same bad-row counts.
Frames are stored as float16 by default (half the bytes; about 1e-3 relative rounding of the
normalised pixels), `--dtype float32` keeps them exact. `manifest.json` records the annotation files
and the pre-processing; training refuses a cache made from other files.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import io
import json
import os
import sys
from typing import List, Sequence

import numpy as np

MANIFEST = "manifest.json"


def serialize(sample: dict, dtype=np.float16) -> bytes:
    arrays = {"input_ids": sample["input_ids"], "labels": sample["labels"], "bad": np.asarray(sample["bad"])}
    for key in ("video", "audio"):
        if sample[key] is not None:
            arrays[key] = np.asarray(sample[key]).astype(dtype)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def deserialize(record: bytes) -> dict:
    with np.load(io.BytesIO(record)) as z:
        return {"input_ids": z["input_ids"], "labels": z["labels"], "bad": bool(z["bad"]),
                "video": z["video"].astype(np.float32) if "video" in z else None,
                "audio": z["audio"].astype(np.float32) if "audio" in z else None}


def cache_shards(cache: str, source_index: int) -> List[str]:
    shards = sorted(glob.glob(os.path.join(cache, f"{source_index:03d}", "*.array_record")))
    if not shards:
        raise FileNotFoundError(f"cache {cache} has no shards for annotation file #{source_index}")
    return shards


def check_manifest(cache: str, source_paths: Sequence[str]) -> dict:
    path = os.path.join(cache, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: not a cache written by data_pipelines.cache")
    with open(path) as f:
        manifest = json.load(f)
    if list(manifest["sources"]) != list(source_paths):
        raise ValueError(f"cache {cache} was made from {manifest['sources']}, the config names {list(source_paths)}")
    return manifest


def write_cache(sources, spec, out: str, *, records_per_shard: int = 1024, dtype: str = "float16",
                worker_count: int = 0, read_threads: int = 4) -> dict:
    """Decode every row of `sources` (pipeline.Source list) with `spec` (samples.SampleSpec) into `out`."""
    import grain
    from array_record.python.array_record_module import ArrayRecordWriter

    from data_pipelines.pipeline import row_datasets
    from data_pipelines.samples import SampleDecoder

    counts = []
    for i, rows in enumerate(row_datasets(sources, spec.data_folder)):
        folder = os.path.join(out, f"{i:03d}")
        os.makedirs(folder, exist_ok=True)
        decoded = rows.map(SampleDecoder(spec)).to_iter_dataset(grain.ReadOptions(num_threads=read_threads))
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
    manifest = {"sources": [s.path for s in sources], "counts": counts, "dtype": dtype,
                "spec": dataclasses.asdict(spec)}
    with open(os.path.join(out, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the training config whose data to cache")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--workers", type=int, default=0, help="decoding worker processes")
    parser.add_argument("--records-per-shard", type=int, default=1024)
    args = parser.parse_args(argv)
    from data_pipelines.from_config import make_synthetic_data, sample_spec, sources_of
    from vllama_jax.train.config import load_train_config
    cfg = load_train_config(args.config, args.set)
    model = cfg.model.resolve()
    make_synthetic_data(cfg, model)
    manifest = write_cache(sources_of(cfg), sample_spec(cfg, model), args.out, dtype=args.dtype,
                           records_per_shard=args.records_per_shard, worker_count=args.workers)
    print(json.dumps(manifest["counts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
