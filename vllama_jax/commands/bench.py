"""`vllama-jax bench --out DIR [--quick]`: speed and agreement side by side with the PyTorch reference.

Runs benchmarks/run_bench.py of this checkout (decoder prefill, greedy generation, CLIP tower, decode at
real sizes with float32 and int8 weights; ours vs transformers on the same weights and inputs) and writes
DIR/bench.json and DIR/bench.png. PyTorch and transformers are the test extras: without them the command
says how to install them.
"""
import importlib
import os
import sys

HELP = "time JAX vs the PyTorch reference on the same checkpoint and inputs (bench.json, bench.png)"

KINDS = ("prefill", "generate", "vision", "decode")


def add_arguments(p):
    p.add_argument("--out", required=True, help="folder for bench.json and bench.png")
    p.add_argument("--quick", action="store_true", help="smallest sizes, fewer runs (seconds; for tests)")
    p.add_argument("--warmup", type=int, help="untimed runs before timing (default 1)")
    p.add_argument("--repeats", type=int, help="timed runs, the median is reported (default 5, 3 with --quick)")
    p.add_argument("--only", nargs="+", choices=KINDS, help="run only these kinds of case")
    p.add_argument("--decode-sizes", nargs="+", help="decode case: only these decoder sizes (4x256, 374M, 1B)")


def _run_bench_module():
    """benchmarks/run_bench.py lives beside the package in a checkout, not inside an installed wheel."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(root, "benchmarks", "run_bench.py")):
        raise SystemExit(f"vllama-jax bench: no benchmarks/run_bench.py under {root}; run it from a source "
                         "checkout of vllama-jax")
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("benchmarks.run_bench")


def _missing_references():
    missing = []
    for name in ("torch", "transformers"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def main(args) -> int:
    missing = _missing_references()
    if missing:
        print(f"vllama-jax bench compares against the PyTorch reference and needs {' and '.join(missing)}: "
              "install the test extras (`pip install -e '.[test]'` or `bash scripts/setup_env.sh --test`)",
              file=sys.stderr)
        return 2
    _run_bench_module().run(args.out, quick=args.quick, warmup=args.warmup, repeats=args.repeats, only=args.only,
                            decode_sizes=args.decode_sizes)
    return 0
