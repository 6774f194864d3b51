"""The H200 decode figures after fusing q/k/v and gate/up (2026-11-26, later runs), one table and summary.png.

    python benchmarks/results/h200-2026-11-26-fused/summary.py

run1  benchmarks.decode_profile before the change, three XLA-flag variants: default, command buffers (CUDA
      graphs, WHILE included), the dot merger off.
run2  the same profile with `fuse_projections` (what `vllama_jax.load` holds on accelerators now) and without,
      on one machine; then benchmarks.accelerator (ours against transformers' generate in the same run).
run3  the one-row GEMM padding of layers/linear.py tried at 1B and 7B (a zero or a copied second row); the
      landed rule pads only weights under 10M elements, which leaves every 7B product alone.
Bandwidth fractions: weight bytes read per step x steps/s over the device-to-device copy of the same run.
"""
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
load = lambda name: json.load(open(os.path.join(HERE, name)))  # noqa: E731

rows = []  # (variant, case, tokens/s, bandwidth fraction, kernels/step, kernel busy ms/step, ms/step)
for name, label in (("run1-profile-default", "before (run 1)"), ("run1-profile-cmdbuf", "before + command buffers"),
                    ("run1-profile-nodotmerge", "before, dot merger off"), ("run2-profile-unfused", "before (run 2)"),
                    ("run2-profile-fused", "fused (run 2)"), ("run3-profile-rowpad-zeros", "fused + zero row (run 3)"),
                    ("run3-profile-rowpad-dup", "fused + copied row (run 3)")):
    for c in load(name + ".json")["cases"]:
        rows.append((label, c["case"], c["tokens_per_s"], c["bandwidth_fraction"], c["kernels_per_step"],
                     c["kernel_busy_ms_per_step"], c["ms_per_step"]))

print("| variant | case | tok/s | bandwidth | kernels/step | kernel busy ms/step | ms/step |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1%} | {r[4]:.0f} | {r[5]:.3f} | {r[6]:.3f} |")

acc = load("run2-accelerator.json")
print("\nours (fused, split layers) against transformers generate, same run "
      f"(copy {acc['limits']['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s):")
for r in acc["decode"]:
    print(f"  {r['name']}: ours {r['split']['tokens_per_s']:.1f} tok/s ({r['split']['bandwidth_fraction']:.0%}), "
          f"transformers {r['torch_tokens_per_s']:.1f} ({r['torch_bandwidth_fraction']:.0%}), "
          f"{r['split']['speedup_vs_torch']:.2f}x; first token equal {r['split']['first_token_equal']}")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
cases = ["7B b1 +64", "1B b1 +64"]
variants = ["before (run 2)", "before (run 1)", "fused (run 2)", "fused + zero row (run 3)"]
for i, case in enumerate(cases):
    got = [(v, next((r for r in rows if r[0] == v and r[1] == case), None)) for v in variants]
    got = [(v, r) for v, r in got if r is not None]
    colour = {"before (run 2)": "#bbb", "before (run 1)": "#bbb", "fused (run 2)": "#4a8", "fused + zero row (run 3)": "#38c"}
    axes[i].bar(range(len(got)), [r[3] for _, r in got], color=[colour[v] for v, _ in got])
    axes[i].set_xticks(range(len(got)), [v for v, _ in got], rotation=15, fontsize=8)
    axes[i].axhline(0.8, color="k", ls="--", lw=1)
    axes[i].set_ylim(0, 1)
    axes[i].set_title(f"{case}: weight reads / copy bandwidth")
    for j, (_, r) in enumerate(got):
        axes[i].text(j, r[3] + 0.02, f"{r[2]:.0f} tok/s", ha="center", fontsize=8)
fig.suptitle("NVIDIA H200, bfloat16 greedy decode, jax 0.11.2 (2026-11-26)")
fig.tight_layout()
fig.savefig(os.path.join(HERE, "summary.png"), dpi=110)
