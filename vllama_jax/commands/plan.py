"""`vllama-jax plan --phase PHASE --topology v5p:4x4x8 [--preset NAME] [--mesh fsdp=64,tensor=2 | auto]
[--global-batch N | auto] [--out plan.json]`: will this phase fit that TPU slice, and how fast will it step?

Compiles the phase's real train step for the slice on this (CPU) host with libtpu (see
vllama_jax/train/plan.py), prints a short table and writes the whole plan as JSON. The flags are
overrides of the phase's config, as `train --set` would make them; `--mesh` replaces its whole mesh
(axes left out are 1). `--mesh auto` tries the meshes the slice allows, `--global-batch auto` the
largest per-device batch that fits (vllama_jax/train/plan_search.py): one table row per try, the best
named, and the JSON `{"candidates": [...], "best": plan}`. `--topology cpu:N` compiles for N simulated
host devices (no libtpu; no HBM size or peak is known: `--hbm-gib` gives one).
"""
from __future__ import annotations

import json
import logging
import sys

HELP = "compile a phase's train step for a TPU slice on this host: per-device memory, fit, step time, best mesh"

def add_arguments(p) -> None:
    p.add_argument("--phase", required=True,
                   help="a phase config name (video_finetune: launch/configs/video_finetune.yaml) or a YAML path")
    p.add_argument("--topology", required=True,
                   help="a TPU slice, e.g. v5p:2x2x2, v5e:2x2, v6e:4x4; or cpu:N, N simulated host devices")
    p.add_argument("--preset", help="model preset instead of the config's model.preset (e.g. VideoLLaMA2-7B)")
    p.add_argument("--mesh", help="mesh axes instead of the config's, e.g. fsdp=64,tensor=2 (the others are 1; "
                                  "one axis may be -1); auto: try the meshes the slice allows, name the best")
    p.add_argument("--global-batch", help="samples per step instead of train.global_batch_size; auto: the largest "
                                          "per-device batch that fits, reaching the phase's global batch by "
                                          "gradient accumulation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config override, as for `train` (e.g. --set train.grad_accum=4)")
    p.add_argument("--hbm-gib", type=float, help="HBM of one device in GiB, instead of the chip's known size")
    p.add_argument("--mfu", type=float, default=None, help="assumed model FLOPs utilization (default 0.4)")
    p.add_argument("--out", help="write the plan here as JSON")


def mesh_overrides(mesh: str) -> list:
    """"fsdp=64,tensor=2" -> config overrides of every mesh axis (those not named: 1)."""
    from vllama_jax.sharding import MESH_AXES
    sizes = dict.fromkeys(MESH_AXES, 1)
    for item in mesh.split(","):
        axis, _, size = item.partition("=")
        if axis.strip() not in MESH_AXES or not size.strip().lstrip("-").isdigit():
            raise ValueError(f"--mesh {mesh}: '{item}' is not AXIS=SIZE with AXIS one of {', '.join(MESH_AXES)}")
        sizes[axis.strip()] = int(size)
    return [f"mesh.{axis}={size}" for axis, size in sizes.items()]


def overrides(args) -> list:
    out = []
    if args.preset:
        out.append(f"model.preset={args.preset}")
    if args.mesh and args.mesh != "auto":
        out += mesh_overrides(args.mesh)
    if args.global_batch is not None and args.global_batch != "auto":
        if not args.global_batch.isdigit():
            raise ValueError(f"--global-batch {args.global_batch}: expected a number of samples or auto")
        out.append(f"train.global_batch_size={args.global_batch}")
    return out + list(args.set)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _memory_line(plan: dict) -> str:
    mem = plan["memory_per_device"]
    if mem is None:
        return f"more than {plan['hbm_per_device_gib']:.1f} GiB: {plan['compiler_out_of_memory']}"
    gib = lambda k: f"{mem[k + '_gib']:.2f} GiB"  # noqa: E731
    if plan["hbm_per_device_gib"] is None:
        return (f"{gib('peak')} (no HBM size known: --hbm-gib): arguments {gib('arguments')}, "
                f"temporaries {gib('temporaries')}")
    return (f"{gib('peak')} of {plan['hbm_per_device_gib']:.1f} GiB: arguments {gib('arguments')}, temporaries "
            f"{gib('temporaries')}, outputs not aliased {(mem['outputs_bytes'] - mem['aliased_bytes']) / 2 ** 30:.2f} GiB")


def summary(plan: dict) -> str:
    """The plan as a few aligned lines for the terminal."""
    step, headroom = plan["est_step_time_s"], plan["headroom_gib"]
    rows = [
        ("phase / preset", f"{plan['phase']} / {plan['preset']}"),
        ("slice", f"{plan['topology']} ({plan['device_kind']}, {plan['chips']} chips), mesh "
                  + ",".join(f"{k}={v}" for k, v in plan["mesh"].items())),
        ("batch", f"{plan['global_batch']} x {plan['seq_len']} positions (text {plan['text_len']})"
                  + (f", {plan['grad_accum']} micro-batches" if plan["grad_accum"] > 1 else "")),
        ("params", f"{_count(plan['params']['trainable'])} trainable, {_count(plan['params']['frozen'])} frozen"),
        ("memory / device", _memory_line(plan)),
        ("fits", {True: "yes", False: "NO", None: "unknown"}[plan["fits"]]
                 + (f" (headroom {headroom:.2f} GiB)" if headroom is not None else "")),
        ("step", f"{plan['flops_per_step']:.3g} FLOPs, ~{step:.3g} s at MFU {plan['assumed_mfu']}"
                 if step is not None else f"{plan['flops_per_step']:.3g} FLOPs (no peak known for this chip)"),
        ("compile", f"{plan['compile_s']:.1f} s"),
    ]
    return "\n".join(f"{k:<16} {v}" for k, v in rows)


def _mesh_text(mesh: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in mesh.items() if v != 1) or "1 device"


def search_summary(result: dict) -> str:
    """One line per try of `--mesh auto` / `--global-batch auto`, then the best plan in full."""
    lines = [f"{'mesh':<24} {'batch':>7} {'per dev':>7} {'accum':>5} {'peak GiB':>9} {'fits':>5} {'step s':>8} "
             f"{'ms/sample':>9}"]
    for row in result["candidates"]:
        plan = row["plan"]
        if plan is None:
            lines.append(f"{_mesh_text(row['mesh_tried']):<24} {row['error']}")
            continue
        batch_devices = plan["mesh"]["data"] * plan["mesh"]["fsdp"]
        mem = plan["memory_per_device"]
        step = plan["est_step_time_s"]
        lines.append(f"{_mesh_text(plan['mesh']):<24} {plan['global_batch']:>7} "
                     f"{plan['global_batch'] // plan['grad_accum'] // batch_devices:>7} {plan['grad_accum']:>5} "
                     f"{'> HBM' if mem is None else format(mem['peak_gib'], '.2f'):>9} "
                     f"{ {True: 'yes', False: 'no', None: '?'}[plan['fits']]:>5} "
                     f"{'-' if step is None else format(step, '.3g'):>8} "
                     f"{'-' if step is None else format(1e3 * step / plan['global_batch'], '.3g'):>9}")
    best = result["best"]
    lines.append("")
    lines.append("best: none fits" if best is None else f"best: {_mesh_text(best['mesh'])}\n{summary(best)}")
    return "\n".join(lines)


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from vllama_jax.train.config import load_train_config, phase_config_path
    from vllama_jax.train.plan import DEFAULT_MFU, plan_phase
    from vllama_jax.train.plan_search import search
    auto = args.mesh == "auto" or args.global_batch == "auto"
    try:
        cfg = load_train_config(phase_config_path(args.phase), overrides(args))
        try:
            cfg.model.resolve()  # an unknown preset fails here, before anything compiles
        except KeyError as e:
            raise ValueError(f"--preset / model.preset: {e.args[0]}") from None
        kw = dict(hbm_gib=args.hbm_gib, mfu=args.mfu or DEFAULT_MFU)
        if auto:
            meshes = "auto" if args.mesh == "auto" else [cfg.mesh.axes()]
            plan = search(cfg, args.topology, meshes, "auto" if args.global_batch == "auto" else None, **kw)
        else:
            plan = plan_phase(cfg, args.topology, **kw)
    except ValueError as e:  # bad flags or config values (PlanError, TrainConfigError): the message names them
        print(f"vllama-jax plan: {e}", file=sys.stderr)
        return 2
    print(search_summary(plan) if auto else summary(plan))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(plan, f, indent=2)
    return 0
