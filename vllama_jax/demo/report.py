"""What the demo shows: the results table on the terminal, plots and example frames in its folder.

    print(table(results))                   # accuracy per kind and per answer format: STC, mean pooling, chance
    plot_training(runs, "curves.png")       # loss per step of every phase, both variants
    plot_accuracy(results, "acc.png")       # STC per kind against chance
    plot_stc_vs_pool(results, "cmp.png")    # STC vs mean pooling per kind
    plot_examples(examples, data, "ex.png") # a few held-out clips: frames, question, answer

`runs`: {variant: [run output_dir, ...]} (their metrics.jsonl); `results`: the dict of results.json.
Plots are small PNGs (matplotlib's Agg backend: no display needed).
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np

from vllama_jax.preprocess.video import read_clip
from vllama_jax.train.metrics import read_metrics

LABELS = {"stc": "STC connector", "mean_pool": "mean pooling (mlp2x_gelu)"}


def table(results: dict) -> str:
    """Accuracy +- one standard error per kind; "STC - pool": the paired difference on the same questions."""
    cats = dict(results["categories"], overall=results["overall"])
    se = results.get("stderr") or {}
    base = results.get("baseline_mean_pool") or {}
    base_se = results.get("baseline_mean_pool_stderr") or {}
    gap = results.get("stc_minus_mean_pool") or {}
    chance = dict(results["chance_by_kind"], overall=results["chance"])
    counts = dict(results["counts"], overall=sum(results["counts"].values()))

    def acc(v, e):
        return "" if v is None else f"{v:.2f} +- {e or 0:.2f}"

    def diff(g):
        return "" if g is None else f"{g['difference']:+.2f} +- {g['stderr']:.2f}"

    lines = [f"{'kind':<14}{'questions':>10}{'STC':>14}{'mean pool':>14}{'STC - pool':>15}{'chance':>8}"]
    for kind in cats:
        lines.append(f"{kind:<14}{counts[kind]:>10}{acc(cats[kind], se.get(kind)):>14}"
                     f"{acc(base.get(kind), base_se.get(kind)):>14}"
                     f"{diff(gap.get(kind)):>15}{chance[kind]:>8.2f}")
    formats = results.get("by_format") or {}
    stc, pool = formats.get("stc") or {}, formats.get("mean_pool") or {}
    for fmt, name in (("short", "short"), ("multiple_choice", "mult. choice")):
        if fmt in stc:
            p = pool.get(fmt) or {}
            lines.append(f"{name:<14}{stc[fmt]['questions']:>10}{acc(stc[fmt]['accuracy'], stc[fmt]['stderr']):>14}"
                         f"{acc(p.get('accuracy'), p.get('stderr')):>14}{'':>15}{stc[fmt]['chance']:>8.2f}")
    return "\n".join(lines)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_training(runs: Dict[str, Sequence[str]], path: str) -> str:
    """Loss against the step counted over all phases, one line per variant, phases marked."""

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=90)
    for variant, dirs in runs.items():
        offset, xs, ys, bounds = 0, [], [], []
        for d in dirs:
            rows = read_metrics(d)  # {step: row}
            steps = sorted(rows)
            xs += [offset + s for s in steps]
            ys += [rows[s]["loss"] for s in steps]
            offset += max(steps, default=0)
            bounds.append((offset, os.path.basename(d)))
        ax.plot(xs, ys, label=LABELS.get(variant, variant), lw=1)
    for x, name in bounds[:-1]:
        ax.axvline(x, color="grey", lw=0.5, ls="--")
        ax.text(x, ax.get_ylim()[1], " " + name.replace("demo_", "") + " ->", fontsize=7, va="top", ha="right")
    ax.set_xlabel("step (phases video -> audio -> audio-visual)")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_accuracy(results: dict, path: str) -> str:
    plt = _plt()
    kinds = list(results["categories"])
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=90)
    x = np.arange(len(kinds))
    se = results.get("stderr") or {}
    ax.bar(x, [results["categories"][k] for k in kinds], yerr=[se.get(k, 0) for k in kinds], capsize=3,
           color="tab:blue", label="STC (trained demo model), +- 1 s.e.")
    ax.scatter(x, [results["chance_by_kind"][k] for k in kinds], marker="_", s=600, color="k", zorder=3,
               label="chance")
    ax.set_xticks(x, kinds)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (held-out clips)")
    ax.set_title(f"overall {results['overall']:.2f} (chance {results['chance']:.2f})", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_stc_vs_pool(results: dict, path: str) -> str:
    plt = _plt()
    base = results["baseline_mean_pool"]
    kinds = [k for k in results["categories"] if k in base]
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=90)
    x = np.arange(len(kinds))
    se, base_se = results.get("stderr") or {}, results.get("baseline_mean_pool_stderr") or {}
    ax.bar(x - 0.2, [results["categories"][k] for k in kinds], 0.4, yerr=[se.get(k, 0) for k in kinds], capsize=3,
           label=LABELS["stc"])
    ax.bar(x + 0.2, [base[k] for k in kinds], 0.4, yerr=[base_se.get(k, 0) for k in kinds], capsize=3,
           label=LABELS["mean_pool"])
    ax.scatter(x, [results["chance_by_kind"][k] for k in kinds], marker="_", s=900, color="k", zorder=3,
               label="chance")
    ax.set_xticks(x, kinds)
    ax.set_ylim(0, 1.2)  # room for the legend above the bars
    ax.set_ylabel("accuracy (held-out clips)")
    ax.set_title("STC connector vs mean pooling of the frames (+- 1 s.e.)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def clip_frames(path: str, num_frames: int = 8) -> List[np.ndarray]:
    """The frames the model sees (the processor's uniform sampling), as (H, W, 3) uint8."""
    return read_clip(path, num_frames)


def plot_examples(examples: Sequence[dict], data_folder: str, path: str, num_frames: int = 8) -> str:
    """One row per example: its sampled frames, then the question, the expected and the given answer."""
    plt = _plt()
    n = len(examples)
    fig, axes = plt.subplots(n, num_frames, figsize=(num_frames * 0.9, n * 1.25), dpi=90, squeeze=False)
    for i, ex in enumerate(examples):
        frames = clip_frames(os.path.join(data_folder, ex["video"]), num_frames)
        for j, ax in enumerate(axes[i]):
            ax.axis("off")
            if j < len(frames):
                ax.imshow(frames[j], interpolation="nearest")
        mark = "right" if ex["correct"] else "WRONG"
        axes[i][0].set_title(f"[{ex['kind']}] {ex['question']}  ->  {ex['answer']!r} "
                             f"(expected {ex['expected']!r}, {mark})", fontsize=7, loc="left")
    # Each title is wider than the frame it sits on, so tight_layout cannot fit it: fixed margins instead.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.3 / (n * 1.25), wspace=0.05,
                        hspace=0.45)
    fig.savefig(path)
    plt.close(fig)
    return path
