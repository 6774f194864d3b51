"""The CPU decode kernel alone (vllama_jax/kernels/matvec.cc): one decode step's products, timed.

    python -m benchmarks.decode_kernel [--sources A.cc B.cc ...] [--rows 1 8 16] [--layout packed|rows]
                                       [--repeats 7] [--out DIR] [--quick]

One pass = every product of a decode step of the 374M Qwen2-shaped decoder of the `decode` case: 24 layers x
(q/k/v fused 1024 x 1536, o 1024 x 1024, gate/up fused 1024 x 6144, down 3072 x 1024) + the LM head
(1024 x 32000), the layers' weights stacked and read in place by index. `--layout packed` (the default: what
the CPU's decode reads, layers/packed.py) holds each weight in 32-column strips for `vj_matvec_packed_*`;
`--layout rows` the (in, out) weights for `vj_matvec_*`.
For each batch size (`--rows`) and weight type (float32; int8 with per-channel scales), one jitted pass per
kernel source, the sources timed in turn run by run (so the machine's load hits them alike), best of
`--repeats`. Reports ms per pass, GB/s of weights read and GFLOP/s, and whether every source's outputs are
bit-identical to the first's. Random weights; nothing is downloaded.

`--sources`: variants of matvec.cc to compare (default: the package's own); each is compiled once (as
`vllama_jax.kernels` does, same flags) and registered under its own target names. `--out DIR` writes
`decode_kernel.json` and `decode_kernel.png` (GB/s of weights read per case and source). `--quick`: small shapes (a check that the script runs).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vllama_jax import kernels

LAYER_SHAPES = ((1024, 1536), (1024, 1024), (1024, 6144), (3072, 1024))
LAYERS, HIDDEN, VOCAB = 24, 1024, 32000


KERNELS = ("vj_matvec_f32", "vj_matvec_s8", "vj_matvec_packed_f32", "vj_matvec_packed_s8")


def register(sources, layout: str = "packed"):
    """Compile and register each source's kernels as `<name>_<i>`; returns the target suffixes."""
    for i, src in enumerate(sources):
        lib = ctypes.cdll.LoadLibrary(kernels._build(src))
        if layout == "packed" and not hasattr(lib, "vj_matvec_packed_f32"):
            raise SystemExit(f"{src} has no packed kernels: compare it with --layout rows")
        for name in KERNELS:
            if hasattr(lib, name):
                jax.ffi.register_ffi_target(f"{name}_{i}", jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return list(range(len(sources)))


def matvec(i, x, w, layer, scale=None, packed: bool = False):
    n = w.shape[-3] * w.shape[-1] if packed else w.shape[-1]
    out = jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32)
    name = "vj_matvec_packed" if packed else "vj_matvec"
    if scale is None:
        return jax.ffi.ffi_call(f"{name}_f32_{i}", out)(x, w, layer=np.int64(layer))
    return jax.ffi.ffi_call(f"{name}_s8_{i}", out)(x, w, scale, layer=np.int64(layer))


def weights(shapes, layers, hidden, vocab, int8: bool, rng, packed: bool = False):
    """{shape: stacked (layers, in, out)} and the LM head, float32 or int8 (+ scales of ones); `packed`: each
    (in, out) in strips, (layers, out / 32, in, 32), the outputs padded to a multiple of 32."""
    def draw(shape):
        if packed:
            shape = shape[:-1] + (-(-shape[-1] // 32) * 32,)
        if int8:
            w, scale = rng.integers(-127, 128, shape, dtype=np.int8), jnp.ones(shape[:-2] + shape[-1:])
        else:
            w, scale = rng.standard_normal(shape, np.float32), None
        if packed:
            w = np.ascontiguousarray(w.reshape(shape[:-1] + (shape[-1] // 32, 32)).swapaxes(-3, -2))
        return jnp.asarray(w), scale
    stacked = {s: draw((layers,) + s) for s in shapes}
    return stacked, draw((hidden, vocab))


def one_pass(i, x, stacked, head, layers, packed=False):
    """Every product of a step (inputs of width != hidden are x tiled), each summed to keep it live."""
    outs = []
    for layer in range(layers):
        for shape, (w, scale) in stacked.items():
            xi = x if shape[0] == x.shape[1] else jnp.tile(x, (1, shape[0] // x.shape[1]))
            outs.append(matvec(i, xi, w, layer, scale, packed).sum(axis=1))
    outs.append(matvec(i, x, head[0], 0, head[1], packed).sum(axis=1))
    return jnp.stack(outs)


def plot(rows, path):
    """GB/s of weights read, one group of bars per (rows, weights) case, one bar per source."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    sources = [os.path.basename(s["source"]) for s in rows[0]["sources"]]
    width = 0.8 / len(sources)
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
    for j, name in enumerate(sources):
        ax.bar([i + j * width for i in range(len(rows))], [r["sources"][j]["gb_per_s"] for r in rows], width,
               label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels([f"{r['rows']} rows\n{r['weights']}" for r in rows])
    ax.set_ylabel("GB/s of weights read")
    ax.set_title("decode kernel: one pass over a decoder's products")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sources", nargs="+", default=[kernels._SOURCE])
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 8, 16])
    ap.add_argument("--layout", choices=("packed", "rows"), default="packed")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if jax.default_backend() != "cpu" or not kernels.available():
        raise SystemExit("the decode kernel runs on the CPU and needs a C++ compiler (see vllama_jax/kernels)")
    shapes, layers, hidden, vocab = LAYER_SHAPES, LAYERS, HIDDEN, VOCAB
    if args.quick:
        shapes, layers, hidden, vocab = ((64, 96), (192, 64)), 2, 64, 500
        args.rows, args.repeats = args.rows[:2], 2
    ids = register(args.sources, args.layout)
    packed = args.layout == "packed"
    rng = np.random.default_rng(0)
    rows = []
    for int8 in (False, True):
        stacked, head = weights(shapes, layers, hidden, vocab, int8, rng, packed)
        nbytes = sum(w.nbytes for w, _ in stacked.values()) + head[0].nbytes
        params = nbytes // (1 if int8 else 4)
        for m in args.rows:
            x = jnp.asarray(rng.standard_normal((m, hidden), np.float32))
            fns = [jax.jit(lambda x, i=i: one_pass(i, x, stacked, head, layers, packed)) for i in ids]
            outs = [np.asarray(f(x)) for f in fns]  # compiled, and the outputs to compare
            times = {i: [] for i in ids}
            for _ in range(args.repeats):
                for i, f in zip(ids, fns):
                    t0 = time.perf_counter()
                    f(x).block_until_ready()
                    times[i].append(time.perf_counter() - t0)
            row = {"rows": m, "weights": "int8" if int8 else "float32", "layout": args.layout, "weight_bytes": int(nbytes),
                   "bit_identical": all(np.array_equal(outs[0], o) for o in outs[1:]), "sources": []}
            line = f"{m:3d} rows {row['weights']:7s}"
            for i, src in zip(ids, args.sources):
                t = min(times[i])
                row["sources"].append({"source": src, "ms": t * 1e3, "gb_per_s": nbytes / t / 1e9,
                                       "gflop_per_s": 2 * params * m / t / 1e9})
                line += f" | {os.path.basename(src)} {t * 1e3:7.1f} ms {nbytes / t / 1e9:5.1f} GB/s " \
                        f"{2 * params * m / t / 1e9:5.1f} GFLOP/s"
            print(line + ("" if len(ids) == 1 else f" | bit-identical: {row['bit_identical']}"), flush=True)
            rows.append(row)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "decode_kernel.json"), "w") as f:
            json.dump({"rows": rows, "jax": jax.__version__}, f, indent=1)
        plot(rows, os.path.join(args.out, "decode_kernel.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
