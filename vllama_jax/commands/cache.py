"""`vllama-jax cache --config PHASE.yaml --out DIR`: decode a phase's training rows once into ArrayRecord
shards (data_pipelines/cache.py), for hosts whose CPUs cannot decode video fast enough; then train with
`--set data.cache=DIR`."""
import json

HELP = "pre-decode a phase's training data into ArrayRecord shards (data.cache)"


def add_arguments(p):
    p.add_argument("--config", required=True, help="the training config whose data to cache")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    p.add_argument("--workers", type=int, default=0, help="decoding worker processes")
    p.add_argument("--records-per-shard", type=int, default=1024)


def main(args) -> int:
    from data_pipelines.cache import write_cache
    from data_pipelines.from_config import make_synthetic_data, sample_spec, sources_of
    from vllama_jax.train.config import load_train_config

    cfg = load_train_config(args.config, args.set)
    model = cfg.model.resolve()
    make_synthetic_data(cfg, model)
    manifest = write_cache(sources_of(cfg), sample_spec(cfg, model), args.out, dtype=args.dtype,
                           records_per_shard=args.records_per_shard, worker_count=args.workers)
    print(json.dumps(manifest["counts"]))
    return 0
