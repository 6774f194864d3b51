"""The bench's outputs: `bench.json`, a text table, and `bench.png`.

bench.json:
    {"env": {device_kind, platform, versions, thread counts, ...},
     "settings": {"quick", "dtype", "warmup", "repeats", "sizes"},
     "results": [{"name", "kind" (prefill | generate | vision | decode | video | train), "family", "batch", "seq",
                  "jax": {"median_s", "min_s", "runs_s", "compile_s"}, "torch": {"median_s", "min_s", "runs_s"},
                  "ratio": jax median / torch median, "agreement": {...},
                  "load_1min": the machine's load average when the case ended}, ...],
     "summary": {"geomean_ratio": {kind: ..., "all": ...}}}

Decode rows ("kind": "decode") add: "size", "new_tokens", "params", "jax_int8" (timing), tokens/s of each
side ("jax_tokens_per_s", "torch_tokens_per_s", "int8_tokens_per_s", from each side's fastest run),
"speedup_vs_torch", "int8_speedup_vs_float32", "weight_bytes_per_step", "copy_bandwidth_bytes_per_s" and
"bandwidth_fraction" {"jax", "torch", "jax_int8"} (weight bytes read per step x steps/s / copy bandwidth).
Whole-model rows ("video": a 16-frame prompt's logits; "train": one fine-tune step) add "frames"; the
train row's agreement holds both sides' first-step "loss" and "grad_norm" [ours, PyTorch], and
"params_trainable".

bench.png: one bar per case of the time ratio (log scale, a line at 1: left of it we are faster),
annotated with both medians; with decode cases, a second panel of the memory-bandwidth fraction of each
decode case (ours float32, ours int8, PyTorch).
"""
from __future__ import annotations

import json
import math
import os
from typing import List

KIND_COLOURS = {"prefill": "tab:blue", "generate": "tab:orange", "vision": "tab:green", "decode": "tab:red",
                "video": "tab:purple", "train": "tab:brown"}


def geomean(xs: List[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def summary(results: List[dict]) -> dict:
    by_kind = {}
    for r in results:
        by_kind.setdefault(r["kind"], []).append(r["ratio"])
    out = {kind: geomean(v) for kind, v in by_kind.items()}
    out["all"] = geomean([r["ratio"] for r in results])
    return {"geomean_ratio": out}


def _agreement_text(a: dict) -> str:
    if "max_abs_diff" in a:
        return f"{a['of']} max|diff| {a['max_abs_diff']:.1e}"
    return f"{a['of']} {'equal' if a['tokens_equal'] else 'DIFFER (%.0f%% equal)' % (100 * a['match_fraction'])}"


def _load(row: dict) -> str:
    return "-" if row.get("load_1min") is None else f"{row['load_1min']:.1f}"


def table(report: dict) -> str:
    env = report["env"]
    lines = [f"{env['device_kind']} ({env['platform']}), {env['cpus_available']} CPUs, torch threads "
             f"{env['torch_threads']}; jax {env['jax']}, torch {env['torch']}, transformers {env['transformers']}",
             f"{'case':<30} {'jax ms':>9} {'torch ms':>9} {'ratio':>7} {'compile s':>10} {'load':>5}  agreement"]
    for r in report["results"]:
        lines.append(f"{r['name']:<30} {1e3 * r['jax']['median_s']:>9.2f} {1e3 * r['torch']['median_s']:>9.2f} "
                     f"{r['ratio']:>7.2f} {r['jax']['compile_s']:>10.2f} {_load(r):>5}  "
                     + _agreement_text(r["agreement"]))
    decode = [r for r in report["results"] if r["kind"] == "decode"]
    if decode:
        lines += ["", "decode (tokens/s from each side's fastest run; bandwidth = weight bytes read per step x "
                      "steps/s / copy bandwidth)",
                  f"{'case':<24} {'params':>7} {'ours':>8} {'torch':>8} {'x torch':>8} {'int8':>8} {'int8/f32':>8} "
                  f"{'bw ours':>8} {'bw int8':>8} {'bw torch':>8} {'copy GB/s':>9} {'load':>5}  agreement"]
        for r in decode:
            bw = r["bandwidth_fraction"]
            a = r["agreement"]
            lines.append(
                f"{r['name']:<24} {r['params'] / 1e6:>6.0f}M {r['jax_tokens_per_s']:>8.2f} {r['torch_tokens_per_s']:>8.2f} "
                f"{r['speedup_vs_torch']:>7.2f}x {r['int8_tokens_per_s']:>8.2f} {r['int8_speedup_vs_float32']:>7.2f}x "
                f"{100 * bw['jax']:>7.0f}% {100 * bw['jax_int8']:>7.0f}% {100 * bw['torch']:>7.0f}% "
                f"{r['copy_bandwidth_bytes_per_s'] / 1e9:>9.1f} {_load(r):>5}  "
                f"{'equal' if a['tokens_equal'] else 'DIFFER'} to torch; int8 = f32 on "
                f"{100 * a['int8_match_fraction_vs_float32']:.0f}%")
    g = report["summary"]["geomean_ratio"]
    lines.append("geometric mean of ratio (ours / PyTorch): " + ", ".join(f"{k} {v:.2f}" for k, v in g.items()))
    return "\n".join(lines)


def write_json(report: dict, path: str):
    with open(path, "w") as f:
        json.dump(report, f, indent=1)


def plot(report: dict, path: str):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server, in CI or in a test
    import matplotlib.pyplot as plt

    results = report["results"]
    names = [r["name"] for r in results]
    ratios = [r["ratio"] for r in results]
    decode = [r for r in results if r["kind"] == "decode"]
    if decode:
        fig, (ax, bx) = plt.subplots(2, 1, figsize=(9, 0.45 * len(results) + 0.45 * len(decode) * 1.5 + 3.2),
                                     gridspec_kw={"height_ratios": [len(results) + 1, 1.5 * len(decode) + 1]})
        _bandwidth_panel(bx, decode)
    else:
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(results) + 1.6))
    y = list(range(len(results)))[::-1]
    ax.barh(y, ratios, color=[KIND_COLOURS.get(r["kind"], "grey") for r in results])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(y, names, fontsize=8)
    lo, hi = min(ratios + [1.0]), max(ratios + [1.0])
    ax.set_xlim(lo / 2, hi * 4)
    for yi, r in zip(y, results):
        ax.text(r["ratio"] * 1.05, yi, f"{r['ratio']:.2f}  ({1e3 * r['jax']['median_s']:.1f} / "
                f"{1e3 * r['torch']['median_s']:.1f} ms)", va="center", fontsize=7)
    env = report["env"]
    ax.set_xlabel("time ratio, ours (JAX) / PyTorch reference: median of runs after warm-up (< 1: JAX faster)")
    ax.set_title(f"vllama-jax vs transformers, float32, {env['device_kind']} "
                 f"({env['cpus_available']} CPUs), jax {env['jax']} / torch {env['torch']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bandwidth_panel(ax, decode: List[dict]):
    """Per decode case, the fraction of the copy bandwidth each side's weight reads reach."""
    sides = (("jax", "ours float32", "tab:red"), ("jax_int8", "ours int8", "tab:purple"),
             ("torch", "PyTorch float32", "tab:grey"))
    h = 0.8 / len(sides)
    y = list(range(len(decode)))[::-1]
    for j, (key, label, colour) in enumerate(sides):
        vals = [r["bandwidth_fraction"][key] for r in decode]
        ax.barh([yi + (1 - j) * h for yi in y], vals, height=h, color=colour, label=label)
        for yi, v in zip(y, vals):
            ax.text(v + 0.01, yi + (1 - j) * h, f"{100 * v:.0f}%", va="center", fontsize=6)
    ax.axvline(0.8, color="black", linewidth=1, linestyle="--")
    ax.set_yticks(y, [f"{r['name']} ({r['params'] / 1e6:.0f}M)" for r in decode], fontsize=8)
    ax.set_xlabel("weight bytes read per step x steps/s / copy bandwidth measured in the same run "
                  "(dashed: the 80 % goal)", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")


def write_all(report: dict, out_dir: str) -> dict:
    """bench.json and bench.png in `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "bench.json"), "png": os.path.join(out_dir, "bench.png")}
    write_json(report, paths["json"])
    plot(report, paths["png"])
    return paths
