"""Throughput of the training data loader: decoded samples per second, and per worker process.

    python benchmarks/loader_throughput.py --config launch/configs/smoke.yaml --workers 0 2 --batches 20
    python benchmarks/loader_throughput.py --config launch/configs/video_finetune.yaml --set data.cache=/data/c

For each worker count, builds the run's pipeline (process 0 of 1: annotation rows -> media decode +
template + tokens -> fixed-shape batches, or the ArrayRecord cache when `data.cache` is set), skips
`--warmup` batches (worker start-up, tokenizer load), then times `--batches` batches. Prints one
JSON line per worker count: samples/s, samples/s per worker (0 workers: the main process counts as
one), seconds per batch and the bad rows met; `--out FILE` writes them all as a JSON list.
A TPU host needs samples/s >= global batch / step time / hosts for decoding not to stall training.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from data_pipelines.from_config import train_data
from vllama_jax.train.config import load_train_config, replace_section


def measure(cfg, workers: int, batches: int, warmup: int) -> dict:
    cfg = replace_section(cfg, "data", worker_count=workers)
    data = train_data(cfg, cfg.model.resolve())
    it = data.iterator()
    for _ in range(warmup):
        next(it)
    start, samples, bad = time.perf_counter(), 0, 0
    for _ in range(batches):
        batch = next(it)
        samples += len(batch["bad"])
        bad += int(batch["bad"].sum())
    seconds = time.perf_counter() - start
    if hasattr(it, "close"):
        it.close()
    return {"workers": workers, "samples_per_s": samples / seconds,
            "samples_per_s_per_worker": samples / seconds / max(workers, 1),
            "s_per_batch": seconds / batches, "batch": data.local_batch, "bad_rows": bad,
            "source": "cache" if cfg.data.cache else "decode"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results here as a JSON list")
    args = parser.parse_args(argv)
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    cfg = load_train_config(args.config, args.set)
    results = []
    for w in args.workers:
        results.append(measure(cfg, w, args.batches, args.warmup))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
