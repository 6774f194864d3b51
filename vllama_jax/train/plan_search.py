"""Search over plans: which mesh of a slice trains a phase fastest, and how large a batch fits.

    result = search(cfg, "v5p:2x2x2", meshes="auto", batch="auto")
    result["best"]["mesh"], result["best"]["global_batch"], result["candidates"]   # plans of train/plan.py

Meshes (`mesh_candidates`), for n devices:

    fsdp=n                 params, gradients and moments split n ways; the batch too
    fsdp=n/t, tensor=t     t = 2, 4, 8 where it divides n and the decoder's heads: heads, MLP and
                           vocab split t ways, the batch over fewer devices (a larger micro-batch each)
    data=2, fsdp=n/2       params split n/2 ways, replicated twice: cheaper collectives where it fits
    expert=e, fsdp=n/e     Mixtral only; e = the number of experts (or the largest power of 2 that
                           divides n and it)

Batch (`batch="auto"`): the largest per-device micro-batch m (1, 2, 4, ...) whose step fits, the global
batch being the phase's own (`train.global_batch_size`, rounded up to a multiple of m x the batch
devices) reached by gradient accumulation: grad_accum = global / (m x data x fsdp). A fixed batch
instead keeps the config's global batch and grad_accum (meshes it does not split over are skipped).

Each try is one full compile of the real train step (`plan_phase`), minutes for a 7B model on a small
host; one that does not fit is refused by the TPU compiler in seconds. The best plan is the one that
fits with the least estimated time per sample.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Dict, List, Optional

from vllama_jax.train.config import MeshSection, TrainConfig
from vllama_jax.train.plan import PlanError, plan_phase, topology_devices

log = logging.getLogger(__name__)

TENSOR_SIZES = (2, 4, 8)
MAX_MICRO_BATCH = 64  # per device: a bound on the doubling


def mesh_candidates(model_cfg, devices: int) -> List[Dict[str, int]]:
    """The meshes `search` tries on `devices` devices (see the module docstring), fsdp-only first."""
    dec = model_cfg.decoder
    out = [{"fsdp": devices}]
    for t in TENSOR_SIZES:
        if devices % t == 0 and dec.num_heads % t == 0:
            out.append({"fsdp": devices // t, "tensor": t})
    if devices % 2 == 0:
        out.append({"data": 2, "fsdp": devices // 2})
    if dec.num_experts:
        e = math.gcd(dec.num_experts, devices)
        e = 1 << (e.bit_length() - 1)  # a power of 2 that divides both
        if e > 1:
            out.append({"fsdp": devices // e, "expert": e})
    return out


def _sizes(mesh: Dict[str, int], devices: int) -> Dict[str, int]:
    """Every axis's size, a -1 ("the rest") resolved against `devices`."""
    sizes = {axis: int(mesh.get(axis, 1)) for axis in ("data", "fsdp", "tensor", "expert")}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    return {k: (devices // fixed if v == -1 else v) for k, v in sizes.items()}


def with_mesh_and_batch(cfg: TrainConfig, mesh: Dict[str, int], global_batch: int, grad_accum: int) -> TrainConfig:
    sizes = {axis: mesh.get(axis, 1) for axis in ("data", "fsdp", "tensor", "expert")}
    return dataclasses.replace(cfg, mesh=MeshSection(**sizes), train=dataclasses.replace(
        cfg.train, global_batch_size=global_batch, grad_accum=grad_accum))


def _row(mesh: Dict[str, int], plan: Optional[dict], error: Optional[str] = None) -> dict:
    return {"mesh_tried": mesh, "plan": plan, "error": error}


def _try(cfg: TrainConfig, topology: str, **kw) -> tuple:
    try:
        return plan_phase(cfg, topology, **kw), None
    except PlanError as e:
        return None, str(e)


def largest_batch(cfg: TrainConfig, topology: str, mesh: Dict[str, int], **kw) -> List[dict]:
    """Plans of per-device micro-batch 1, 2, 4, ... on `mesh`, up to the first that does not fit (or
    the one that needs no accumulation): the last fitting one is the answer."""
    batch_devices = mesh.get("data", 1) * mesh.get("fsdp", 1)
    target = cfg.train.global_batch_size
    rows, m = [], 1
    while m <= MAX_MICRO_BATCH:
        step = m * batch_devices
        global_batch = -(-max(target, step) // step) * step  # rounded up to whole micro-batches
        plan, err = _try(with_mesh_and_batch(cfg, mesh, global_batch, global_batch // step), topology, **kw)
        rows.append(_row(mesh, plan, err))
        log.info("mesh %s, %d per device x %d accumulation: %s", mesh, m, global_batch // step,
                 err or ("fits" if plan["fits"] else "does not fit"))
        if plan is None or not plan["fits"] or step >= target:
            break
        m *= 2
    return rows


def search(cfg: TrainConfig, topology: str, meshes: Any = "auto", batch: Any = None, **kw) -> Dict[str, Any]:
    """Plans of every candidate (mesh, batch); `best`: the fitting plan with the least est. time per sample.

    meshes: "auto" (`mesh_candidates`) or a list of {axis: size}; batch: "auto" (`largest_batch`) or None
    (the config's global batch and grad_accum). kw: `plan_phase`'s (hbm_gib, mfu)."""
    devices = len(topology_devices(topology))
    model_cfg = cfg.model.resolve()
    if meshes == "auto":
        meshes = mesh_candidates(model_cfg, devices)
    meshes = [_sizes(m, devices) for m in meshes]
    rows: List[dict] = []
    contenders: List[dict] = []  # per mesh, the plan that counts: its largest fitting batch
    for mesh in meshes:
        if batch == "auto":
            tries = largest_batch(cfg, topology, mesh, **kw)
            rows += tries
            fitting = [r["plan"] for r in tries if r["plan"] is not None and r["plan"]["fits"]]
            contenders += fitting[-1:]
            continue
        batch_devices = mesh.get("data", 1) * mesh.get("fsdp", 1)
        if (cfg.train.global_batch_size // cfg.train.grad_accum) % batch_devices:
            rows.append(_row(mesh, None, f"a micro-batch of {cfg.train.global_batch_size // cfg.train.grad_accum} "
                                         f"does not split over {batch_devices} batch devices"))
            continue
        plan, err = _try(with_mesh_and_batch(cfg, mesh, cfg.train.global_batch_size, cfg.train.grad_accum),
                         topology, **kw)
        rows.append(_row(mesh, plan, err))
        if plan is not None and plan["fits"]:
            contenders.append(plan)
    timed = [p for p in contenders if p["est_step_time_s"] is not None]
    best = min(timed, key=lambda p: p["est_step_time_s"] / p["global_batch"]) if timed else (
        contenders[0] if contenders else None)
    if any(r["plan"] is not None and r["plan"]["fits"] is None for r in rows):
        log.warning("no HBM size is known for these devices: pass --hbm-gib to choose among the meshes")
    return {"topology": topology, "candidates": rows, "best": best}
