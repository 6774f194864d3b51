"""Where a decode step's time goes on an accelerator: our greedy decode timed, then traced kernel by kernel.

    python -m benchmarks.decode_profile --out DIR [--sizes 7B,1B] [--batches 1] [--tag NAME] [--unfused] [--quick]

For each size and batch: random bfloat16 weights drawn on the device (no PyTorch), the decode layout that
`vllama_jax.load` picks for the backend, a 16-token prompt and `--new-tokens` greedy steps in one jitted
`lax.while_loop` (`vllama_jax.generate`). Reports tokens/s and the fraction of the copy bandwidth that one
pass over the weights per step uses (as `benchmarks.accelerator`), then traces `--trace-runs` runs with
`jax.profiler` and sums the device's kernels: kernels per step, their busy time against the wall time (the
rest is launch gaps and host round trips), and the kernels that cost most. The compiled program's op
counts (fusions, library calls, concatenations, command buffers) say what XLA made of it.

XLA flags are the caller's (`XLA_FLAGS=... python -m benchmarks.decode_profile --tag NAME`): run it once
per variant and compare `DIR/profile-NAME.json`. `--quick`: a tiny decoder, a CPU check of the script.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from vllama_jax.loading import Part, decoder_module
from vllama_jax.models.decoder import decode_layout, fuse_projections, split_layers


def random_decoder(cfg, fuse: bool = True) -> Part:
    """A bfloat16 decoder of `cfg`'s shape, weights ~ N(0, 0.02) drawn on the device, in the load layout
    (`fuse=False`: the split layout without `fuse_projections`, for comparison)."""
    from benchmarks.accelerator import random_params

    module = decoder_module(cfg, dtype=jnp.bfloat16)
    params = random_params(module)
    if decode_layout(jnp.bfloat16) == "split":
        params = split_layers(params)
        if fuse:
            params = fuse_projections(params)
    return Part("decoder", cfg, module, params, "<random>")


def device_trace(fn, runs: int) -> dict:
    """Run `fn()` `runs` times under `jax.profiler.trace`; sum the device's kernel events."""
    tmp = tempfile.mkdtemp(prefix="decode_profile_")
    try:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(runs):
                jax.block_until_ready(fn())
        path = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)[0]
        events = json.load(gzip.open(path))["traceEvents"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in names.items() if "/device:" in name}
    total, count = collections.defaultdict(float), collections.defaultdict(int)
    start, end, busy, n = float("inf"), 0.0, 0.0, 0
    for e in events:
        if e.get("ph") != "X" or e.get("pid") not in device_pids:
            continue
        dur = float(e.get("dur", 0.0))
        total[e["name"]] += dur
        count[e["name"]] += 1
        start, end = min(start, float(e["ts"])), max(end, float(e["ts"]) + dur)
        busy += dur
        n += 1
    top = sorted(total, key=total.get, reverse=True)[:30]
    return {"processes": sorted(names.values()), "device_processes": sorted(names[p] for p in device_pids),
            "events": n, "busy_us": busy,
            "span_us": (end - start) if n else 0.0,
            "top": [{"name": k[:120], "total_us": total[k], "count": count[k], "mean_us": total[k] / count[k]}
                    for k in top]}


def hlo_counts(text: str) -> dict:
    """Op counts in the compiled program's text: what XLA fused, called out and copied."""
    ops = collections.Counter(re.findall(r"=\s*[\w\[\]{},:\s\.\d/]*?\s([a-z][\w-]*)\(", text))
    keep = ("fusion", "custom-call", "concatenate", "copy", "dynamic-update-slice", "dynamic-slice", "while",
            "conditional", "call", "all-reduce")
    big = collections.Counter()  # weight-sized copies: what a decode step should not do
    for m in re.finditer(r"=\s*\w+\[([\d,]+)\]\S*\s(concatenate|copy|slice|dynamic-slice)\(", text):
        if np.prod([int(d) for d in m.group(1).split(",")]) >= 1 << 20:
            big[f"{m.group(2)} [{m.group(1)}]"] += 1
    return {"ops": {k: ops[k] for k in keep if ops[k]}, "big_copies": dict(big.most_common(20)),
            "command_buffers": text.count("command_buffer"),
            "cublas_calls": text.count("__cublas$gemm") + text.count("__cublas$lt"),
            "triton_gemms": text.count("__triton_gemm")}


def case(name: str, cfg, batch: int, new_tokens: int, repeats: int, trace_runs: int, bandwidth: float,
         out_dir: str, tag: str, fuse: bool = True) -> dict:
    from benchmarks.cases import decode_weight_bytes, our_generate  # local: cases imports torch at the top
    from benchmarks.timing import compile_jax

    part = random_decoder(cfg, fuse)
    ids = jnp.asarray(np.random.default_rng(4).integers(3, cfg.vocab_size, (batch, 16)).astype(np.int32))
    mask = jnp.ones((batch, 16), jnp.int32)
    fn, compile_s = compile_jax(our_generate(part, new_tokens), part.params, ids, mask)
    text = fn.as_text()
    with open(os.path.join(out_dir, f"hlo-{tag}-{name}-b{batch}.txt"), "w") as f:
        f.write(text)
    run = lambda: fn(part.params, ids, mask)  # noqa: E731
    jax.block_until_ready(run())
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        runs.append(time.perf_counter() - t0)
    best = min(runs)
    nbytes = decode_weight_bytes(part)
    trace = device_trace(run, trace_runs)
    steps = trace_runs * new_tokens
    row = {"case": f"{name} b{batch} +{new_tokens}", "size": name, "batch": batch, "new_tokens": new_tokens,
           "layout": decode_layout(jnp.bfloat16), "fused_projections": fuse, "weight_bytes_per_step": nbytes,
           "compile_s": compile_s,
           "min_s": best, "median_s": float(np.median(runs)), "tokens_per_s": batch * new_tokens / best,
           "ms_per_step": best / new_tokens * 1e3,
           "bandwidth_fraction": nbytes * new_tokens / best / bandwidth if bandwidth else None,
           "floor_ms_per_step": nbytes / bandwidth * 1e3 if bandwidth else None,
           "kernels_per_step": trace["events"] / steps, "kernel_busy_ms_per_step": trace["busy_us"] / steps / 1e3,
           "traced_span_ms_per_run": trace["span_us"] / trace_runs / 1e3, "hlo": hlo_counts(text), "trace": trace}
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tag", default="default", help="names this run's files (the XLA flags' variant)")
    p.add_argument("--sizes", default="7B,1B")
    p.add_argument("--batches", default="1")
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--trace-runs", type=int, default=2)
    p.add_argument("--unfused", action="store_true", help="split layers without fuse_projections (comparison)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    from benchmarks.accelerator import decode_sizes, device_limits

    os.makedirs(a.out, exist_ok=True)
    sizes = decode_sizes(a.quick)
    chosen = list(sizes) if a.quick else a.sizes.split(",")
    limits = device_limits(a.quick)
    result = {"tag": a.tag, "xla_flags": os.environ.get("XLA_FLAGS", ""), "device": jax.devices()[0].device_kind,
              "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"), "limits": limits, "cases": [], "errors": {}}
    new_tokens = a.new_tokens or (4 if a.quick else 64)
    out_json = os.path.join(a.out, f"profile-{a.tag}.json")
    for name in chosen:
        for batch in (int(b) for b in a.batches.split(",")):
            try:
                row = case(name, sizes[name], batch, new_tokens, a.repeats, a.trace_runs,
                           limits["copy_bandwidth_bytes_per_s"], a.out, a.tag, fuse=not a.unfused)
                result["cases"].append(row)
                print(f"[{a.tag}] {row['case']}: {row['tokens_per_s']:.1f} tok/s, {row['ms_per_step']:.3f} ms/step "
                      f"(floor {row['floor_ms_per_step'] or 0:.3f}), bandwidth {row['bandwidth_fraction'] or 0:.1%}, "
                      f"{row['kernels_per_step']:.0f} kernels/step busy {row['kernel_busy_ms_per_step']:.3f} ms, "
                      f"compile {row['compile_s']:.1f} s, hlo {row['hlo']}", flush=True)
                for t in row["trace"]["top"][:12]:
                    print(f"    {t['total_us'] / a.trace_runs / 1e3:8.3f} ms/run {t['count'] // a.trace_runs:6d}x "
                          f"{t['mean_us']:8.2f} us  {t['name'][:80]}", flush=True)
            except Exception as e:  # one case failing (out of memory, a flag XLA rejects) keeps the others
                import traceback
                traceback.print_exc()
                result["errors"][f"{name} b{batch}"] = f"{type(e).__name__}: {e}"[:2000]
            with open(out_json, "w") as f:
                json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
