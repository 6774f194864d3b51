"""The planning table of launch/README.md: for each preset and phase, the smallest TPU slice of a family
whose train step fits, from real compiles (`vllama_jax/train/plan.py`) on this CPU host.

    python scripts/plan_table.py --family v5p --presets VideoLLaMA2-7B-16F --phases video_finetune \
        --out-dir runs/plan_table
    python scripts/plan_table.py --table runs/plan_table      # the markdown table of what is there
    python scripts/plan_table.py --out-dir runs/plan_table --record plan.json   # a `plan --out` as a cell

For each cell, slices of the family are tried from the smallest that could hold the train state
(float32 params, Adam moments of the trainable ones: a lower bound, no compile) upwards, with the mesh
fsdp = chips and one sample per chip (global batch = chips, no accumulation: the issue's setting; the
recipe's global batch is reached with `train.grad_accum`, which adds one float32 copy of the trainable
gradients per device). A slice that does not fit is refused by the TPU compiler in seconds; the one that
fits takes a full compile (minutes for 7B, more for 72B). Each cell's plan is written to
`<out-dir>/<preset>__<phase>__<family>.json` (a cell already there is not compiled again), with the
commands' text in the table.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Slices per family, smallest first (chips = product of the dims).
SLICES = {
    "v5p": ["2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8"],
    "v6e": ["2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"],
    "v5e": ["2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"],
}
PHASES_OF = {  # phases a preset has parts for (the audio phases need BEATs)
    "video": ["video_pretrain", "video_finetune"],
    "av": ["video_pretrain", "video_finetune", "audio_pretrain", "audio_finetune", "av_joint"],
}
GIB = 2 ** 30


def state_lower_bound(cfg) -> int:
    """Bytes of the train state, whole: 4 per param, 8 more per trainable param (Adam moments)."""
    import flax.linen as nn
    import jax

    from vllama_jax.loading import boxed_abstract_params
    from vllama_jax.models.sequence import dummy_batch
    from vllama_jax.models.videollama2 import VideoLLaMA2
    from vllama_jax.train.optimizer import trainable_mask
    model_cfg = cfg.model.resolve()
    params = nn.unbox(boxed_abstract_params(VideoLLaMA2(model_cfg), dummy_batch(model_cfg)))
    mask = trainable_mask(params, cfg.optimizer.trainable)
    leaves = zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask))
    sizes = [(math.prod(x.shape), t) for x, t in leaves]
    return sum(4 * n + (8 * n if t else 0) for n, t in sizes)


def cell(preset: str, phase: str, family: str, out_dir: str, max_chips: int) -> dict:
    from vllama_jax.train.config import phase_config_path
    from vllama_jax.devices import device_spec
    from vllama_jax.train.config import load_train_config
    from vllama_jax.train.plan import plan_phase, topology_devices

    path = os.path.join(out_dir, f"{preset}__{phase}__{family}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    base = load_train_config(phase_config_path(phase), [f"model.preset={preset}"])
    hbm = device_spec(topology_devices(f"{family}:{SLICES[family][0]}")[0].device_kind).hbm_gib * GIB
    need = state_lower_bound(base)
    tried = []
    result = {"preset": preset, "phase": phase, "family": family, "state_bytes": need, "plan": None, "tried": tried}
    for dims in SLICES[family]:
        chips = math.prod(int(d) for d in dims.split("x"))
        if chips > max_chips:
            break
        if need / chips > hbm:
            tried.append({"topology": f"{family}:{dims}", "skipped": "state alone exceeds HBM"})
            continue
        cfg = load_train_config(phase_config_path(phase), [f"model.preset={preset}", "mesh.data=1",
                                                           f"mesh.fsdp={chips}", f"train.global_batch_size={chips}",
                                                           "train.grad_accum=1"])
        start = time.time()
        plan = plan_phase(cfg, f"{family}:{dims}")
        tried.append({"topology": f"{family}:{dims}", "fits": plan["fits"], "wall_s": time.time() - start,
                      "peak_gib": None if plan["memory_per_device"] is None else plan["memory_per_device"]["peak_gib"]})
        logging.info("%s %s %s:%s -> %s", preset, phase, family, dims, "fits" if plan["fits"] else "no")
        if plan["fits"]:
            result["plan"] = plan
            break
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def table(out_dir: str) -> str:
    rows = ["| preset | phase | family | smallest slice | mesh | batch | peak / device | arguments / device | "
            "est. step (MFU 0.4) |", "|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        p = r["plan"]
        if p is None:
            rows.append(f"| {r['preset']} | {r['phase']} | {r['family']} | none up to the largest tried "
                        f"({r['tried'][-1]['topology'] if r['tried'] else '-'}) | | | | | |")
            continue
        mem = p["memory_per_device"]
        mesh = ",".join(f"{k}={v}" for k, v in p["mesh"].items() if v != 1)
        rows.append(f"| {r['preset']} | {r['phase']} | {r['family']} | {p['topology']} ({p['chips']} chips) | {mesh} "
                    f"| {p['global_batch']} | {mem['peak_gib']:.1f} GiB of {p['hbm_per_device_gib']:.0f} "
                    f"| {mem['arguments_gib']:.1f} GiB | {p['est_step_time_s']:.2f} s |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="*", default=[])
    p.add_argument("--phases", nargs="*", default=None, help="default: every phase the preset has parts for")
    p.add_argument("--family", action="append", choices=sorted(SLICES), default=None)
    p.add_argument("--max-chips", type=int, default=512)
    p.add_argument("--out-dir", default="runs/plan_table")
    p.add_argument("--table", metavar="DIR", help="print the markdown table of the cells in DIR and stop")
    p.add_argument("--record", nargs="*", metavar="PLAN_JSON", default=[],
                   help="file plans written by `vllama-jax plan --out` as cells of --out-dir (on the smallest "
                        "slice of their family: the caller vouches for that) and stop")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.table:
        print(table(args.table))
        return 0
    for path in args.record:
        with open(path) as f:
            plan = json.load(f)
        family = plan["topology"].split(":")[0]
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, f"{plan['preset']}__{plan['phase']}__{family}.json"), "w") as f:
            json.dump({"preset": plan["preset"], "phase": plan["phase"], "family": family, "plan": plan,
                       "tried": [{"topology": plan["topology"], "fits": plan["fits"], "recorded_from": path}]},
                      f, indent=1)
    if args.record:
        return 0
    from vllama_jax.config import preset as get_preset
    for name in args.presets:
        phases = args.phases or PHASES_OF["av" if get_preset(name).audio is not None else "video"]
        for phase in phases:
            for family in args.family or ["v5p", "v6e"]:
                r = cell(name, phase, family, args.out_dir, args.max_chips)
                p_ = r["plan"]
                print(f"{name} {phase} {family}: " + ("none" if p_ is None else
                      f"{p_['topology']} peak {p_['memory_per_device']['peak_gib']:.1f} GiB"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
