"""The H200 figures of 2026-11-26 in one table and plot (summary.png), from the three runs' JSON here.

    python benchmarks/results/h200-2026-11-26/summary.py

Bandwidth fractions are taken against the device-to-device copy measured in runs 2 and 3 (4.18-4.21 TB/s,
torch `copy_`); run 1 measured only an XLA elementwise pass (2.35 TB/s), so its fractions are recomputed here.
"""
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
load = lambda name: json.load(open(os.path.join(HERE, name)))  # noqa: E731
run1, run2, run3 = load("run1_decode_train.json"), load("run2_layouts_7b_b1.json"), load("run3_split_7b_1b.json")
bw = min(r["limits"]["copy_bandwidth_bytes_per_s"] for r in (run2, run3))  # the lower: fractions not flattered

split = {(r["size"], r["batch"]): r["split"]["tokens_per_s"] for r in run3["layouts"]}
split[("7B", 1)] = max(split[("7B", 1)], run2["layouts"][0]["split"]["tokens_per_s"])
rows = []
for r in run1["decode"]:
    key = (r["size"], r["batch"])
    steps = lambda tok_s: tok_s / r["batch"]  # noqa: E731 -- one pass over the weights per step
    frac = lambda tok_s: r["weight_bytes_per_step"] * steps(tok_s) / bw  # noqa: E731
    rows.append({"case": f"{r['size']} batch {r['batch']}", "torch": r["torch_tokens_per_s"],
                 "scan": r["scan"]["tokens_per_s"], "split": split[key],
                 "frac": {k: frac(v) for k, v in (("torch", r["torch_tokens_per_s"]),
                                                    ("scan", r["scan"]["tokens_per_s"]), ("split", split[key]))}})

print(f"copy bandwidth {bw / 1e12:.2f} TB/s")
print("| case | transformers tok/s | ours scan | ours split (default) | split / transformers | bandwidth torch / scan / split |")
print("|---|---|---|---|---|---|")
for r in rows:
    f = r["frac"]
    print(f"| {r['case']} | {r['torch']:.1f} | {r['scan']:.1f} | {r['split']:.1f} | {r['split'] / r['torch']:.1f}x | "
          f"{f['torch']:.0%} / {f['scan']:.0%} / {f['split']:.0%} |")
t = run1["train"]
print(f"train {t['preset']} {t['phase']} batch {t['batch']} x {t['seq_len']}: {t['step_s']:.3f} s/step, "
      f"MFU {t['mfu_vs_datasheet']:.1%} of {t['datasheet_peak_flops'] / 1e12:.0f} TFLOP/s, "
      f"{t['flops_per_step'] / t['step_s'] / run1['limits']['matmul_bf16_flops_per_s']:.1%} of the measured matmul rate")

fig, ax = plt.subplots(figsize=(8, 4))
w = 0.27
for i, (side, label) in enumerate((("torch", "transformers generate"), ("scan", "ours, scanned layers"),
                                   ("split", "ours, split layers (default)"))):
    ax.bar([j + w * (i - 1) for j in range(len(rows))], [r["frac"][side] for r in rows], w, label=label)
ax.axhline(0.8, color="k", ls="--", lw=1)
ax.set_xticks(range(len(rows)), [r["case"] for r in rows])
ax.set_ylabel(f"weight bytes x steps/s / {bw / 1e12:.2f} TB/s")
ax.set_title("greedy decode, bfloat16, NVIDIA H200, 2026-11-26")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(HERE, "summary.png"), dpi=110)
