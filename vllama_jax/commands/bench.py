"""`vllama-jax bench --out DIR [--quick]`: speed and agreement side by side with the PyTorch reference.

Runs benchmarks/run_bench.py of this checkout (decoder prefill, greedy generation, CLIP tower, decode at
real sizes with float32 and int8 weights, the whole model's 16-frame video prefill and fine-tune step;
ours vs transformers on the same weights and inputs) and writes
DIR/bench.json and DIR/bench.png. PyTorch and transformers are the test extras: without them the command
says how to install them.
"""
import importlib
import sys

HELP = "time JAX vs the PyTorch reference on the same checkpoint and inputs (bench.json, bench.png)"

KINDS = ("prefill", "generate", "vision", "decode", "video", "train")  # benchmarks/run_bench.py's


def add_arguments(p):
    p.add_argument("--out", required=True, help="folder for bench.json and bench.png")
    p.add_argument("--quick", action="store_true", help="smallest sizes, fewer runs (seconds; for tests)")
    p.add_argument("--warmup", type=int, help="untimed runs before timing (default 1)")
    p.add_argument("--repeats", type=int, help="timed runs, the median is reported (default 5, 3 with --quick)")
    p.add_argument("--only", nargs="+", choices=KINDS, help="run only these kinds of case")
    p.add_argument("--serve", action="store_true", help="instead: the load test of `vllama-jax serve` against "
                   "sequential model.chat calls (benchmarks/serve_load.py; its options: --clients, --requests, ...)")
    p.add_argument("--clients", type=int, default=8, help="--serve: concurrent clients")
    p.add_argument("--requests", type=int, default=16, help="--serve: requests per client")
    p.add_argument("--max-tokens", type=int, default=64, help="--serve: tokens per answer")
    p.add_argument("--decode-steps", type=int, default=1, help="--serve: the server's --decode-steps")
    p.add_argument("--media-cache-mb", type=float, default=0.0, help="--serve: the server's --media-cache-mb "
                   "(default 0: every request decodes its media, as each sequential model.chat call does)")
    p.add_argument("--workers", type=int, help="--serve: the server's media-decoding threads (default: one per core, "
                   "at most 8)")
    p.add_argument("--decode-sizes", nargs="+", help="decode case: only these decoder sizes (4x256, 374M, 1B)")


def _run_bench_module(name="run_bench"):
    """A module of the `benchmarks` package (installed beside vllama_jax by setup.py)."""
    return importlib.import_module(f"benchmarks.{name}")


def _missing_references():
    missing = []
    for name in ("torch", "transformers", "timm"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def main(args) -> int:
    if args.serve:
        _run_bench_module("serve_load").run(args.out, clients=args.clients, requests=args.requests,
                                            max_tokens=args.max_tokens, decode_steps=args.decode_steps,
                                            media_cache_mb=args.media_cache_mb, workers=args.workers)
        return 0
    missing = _missing_references()
    if missing:
        print(f"vllama-jax bench compares against the PyTorch reference and needs {' and '.join(missing)}: "
              "install the test extras (`pip install -e '.[test]'` or `bash scripts/setup_env.sh --test`)",
              file=sys.stderr)
        return 2
    _run_bench_module().run(args.out, quick=args.quick, warmup=args.warmup, repeats=args.repeats, only=args.only,
                            decode_sizes=args.decode_sizes)
    return 0
