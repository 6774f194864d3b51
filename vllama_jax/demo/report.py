"""What the demo shows: the results table on the terminal, plots and example frames in its folder.

    print(table(results))                   # accuracy per kind: STC, mean pooling, chance
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
    cats = results["categories"]
    base = results.get("baseline_mean_pool") or {}
    chance = results["chance_by_kind"]
    counts = results["counts"]
    lines = [f"{'kind':<14}{'questions':>10}{'STC':>8}{'mean pool':>11}{'chance':>8}"]
    for kind in cats:
        b = base.get(kind)
        lines.append(f"{kind:<14}{counts[kind]:>10}{cats[kind]:>8.2f}{'' if b is None else f'{b:.2f}':>11}"
                     f"{chance[kind]:>8.2f}")
    b = base.get("overall")
    lines.append(f"{'overall':<14}{sum(counts.values()):>10}{results['overall']:>8.2f}"
                 f"{'' if b is None else f'{b:.2f}':>11}{results['chance']:>8.2f}")
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
    ax.bar(x, [results["categories"][k] for k in kinds], color="tab:blue", label="STC (trained demo model)")
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
    ax.bar(x - 0.2, [results["categories"][k] for k in kinds], 0.4, label=LABELS["stc"])
    ax.bar(x + 0.2, [base[k] for k in kinds], 0.4, label=LABELS["mean_pool"])
    ax.scatter(x, [results["chance_by_kind"][k] for k in kinds], marker="_", s=900, color="k", zorder=3,
               label="chance")
    ax.set_xticks(x, kinds)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (held-out clips)")
    ax.set_title("STC connector vs mean pooling of the frames", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
