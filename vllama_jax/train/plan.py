"""Plan a training phase for a TPU slice you do not have: compile its real train step on this CPU host.

    plan = plan_phase(load_train_config("launch/configs/video_finetune.yaml"), "v5p:2x2x2")
    plan["memory_per_device"]["peak_gib"], plan["fits"], plan["est_step_time_s"]

XLA's TPU compiler ships in libtpu and runs on any host: `jax.experimental.topologies` describes a
slice ("v5p:4x4x8") as abstract devices that programs can be compiled for but not run on. (A topology
"cpu:N" compiles for N simulated host devices instead: no libtpu needed, XLA's CPU compiler, so the
memory is the CPU program's, without TPU tiling, and there is no peak to estimate a step time from.)
The phase's own train step (`loop.train_program`, the one `vllama-jax train` runs: same model, remat,
optimizer mask, state and batch shardings) is lowered on abstract inputs (shapes + shardings, no memory, so a
72B model plans on a laptop) and compiled for those devices. From the compiled program:

    memory     XLA's per-device buffer assignment (`memory_analysis`): arguments (state + batch),
               outputs, temporaries, generated code; outputs alias the donated state. `peak` is what
               the device must hold at once, compared with its HBM: `fits`.
               A program larger than the chip's HBM does not compile for a TPU: then `fits` is false,
               and `compiler_out_of_memory` holds the compiler's message (how much it needed).
    time       the step's matmul FLOPs, counted analytically (`flops.py`: XLA's own cost analysis counts
               a scanned layer stack once), over the slice's peak FLOP/s at an assumed MFU.

Chip numbers (HBM size, peak FLOP/s, HBM bandwidth) come from `vllama_jax/devices.py`.

The batch is the training layout (`models/sequence.train_batch_shapes`, what data_pipelines fills) at the
phase's largest text bucket: the step's worst case.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np

from vllama_jax.models.sequence import default_buckets, train_batch_shapes
from vllama_jax.devices import device_spec
from vllama_jax.sharding import LOGICAL_AXIS_RULES, make_mesh, use_mesh
from vllama_jax.train.config import TrainConfig
from vllama_jax.train.loop import check_batch_split, train_program
from vllama_jax.train.state import abstract_state

log = logging.getLogger(__name__)

LIBTPU_PIN = "libtpu==0.0.42.1"  # what jax[tpu]==0.10.2 pins
DEFAULT_MFU = 0.4  # an assumption, stated in every plan: well-tuned dense training reaches 0.4-0.6
GIB = 2 ** 30

class PlanError(ValueError):
    """A plan that cannot be made: names the flag or value at fault."""


# ----------------------------------------------------------------------------------------------------
# The slice
# ----------------------------------------------------------------------------------------------------

def cpu_devices(n: int) -> List[Any]:
    """n host (CPU) devices: asks JAX for them if its backends have not started yet, else takes what
    `--xla_force_host_platform_device_count` gave (the count is fixed once JAX has started)."""
    forced = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    want = max(n, jax.config.jax_num_cpu_devices, int(forced[1]) if forced else 1)
    try:  # never fewer than were asked for before: a later plan of fewer devices takes the first n
        jax.config.update("jax_num_cpu_devices", want)
    except RuntimeError:  # backends already initialized: the device count is what it is
        pass
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise PlanError(f"--topology cpu:{n}: this process has {len(devices)} CPU devices, and JAX has started; "
                        f"run the plan in a fresh process or with XLA_FLAGS=--xla_force_host_platform_device_count={n}")
    return devices[:n]


def topology_devices(topology: str) -> List[Any]:
    """The abstract devices of a TPU slice named like "v5p:4x4x8" or "v5e:2x2", or N host devices "cpu:N"."""
    if re.fullmatch(r"cpu:\d+", topology):
        return cpu_devices(int(topology.split(":")[1]))
    if not re.fullmatch(r"v\w+:\d+(x\d+)*", topology):
        raise PlanError(f"--topology {topology!r}: expected a TPU slice such as v5p:2x2x2, v5e:2x2, v6e:4x4, "
                        f"or cpu:N (N simulated host devices)")
    if importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"):
        raise PlanError(f"--topology {topology}: planning for a TPU compiles with XLA's TPU compiler, which is in "
                        f"libtpu; install it with `pip install {LIBTPU_PIN}` (it runs on a CPU host), or point "
                        f"TPU_LIBRARY_PATH at a libtpu.so (scripts/test.sh uses .venv/libtpu/libtpu/libtpu.so)")
    # A plan only compiles: no TPU is opened, so several plans (or a plan beside a TPU job) may load
    # libtpu at once, and libtpu need not look for a TPU VM's metadata (it warns without these).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
    from jax.experimental import topologies
    try:
        return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    except Exception as e:  # noqa: BLE001  (libtpu raises JaxRuntimeError with its own text)
        if "chips_per_host_bounds" not in str(e):
            raise PlanError(f"--topology {topology}: libtpu cannot describe this slice: {e}") from None
    # A slice smaller than one host (v5e:1x1): it is its own host.
    dims = tuple(int(d) for d in topology.split(":")[1].split("x"))
    try:
        return topologies.get_topology_desc(topology_name=topology, platform="tpu",
                                            chips_per_host_bounds=(dims + (1, 1, 1))[:3]).devices
    except Exception as e:  # noqa: BLE001
        raise PlanError(f"--topology {topology}: libtpu cannot describe this slice: {e}") from None


def chip_count(devices: Sequence[Any]) -> int:
    """Chips of a slice. A v5p/v6e chip is one device; a v4 chip without megacore shows its 2 cores.
    Host (CPU) devices count one each."""
    if not all(hasattr(d, "coords") for d in devices):
        return len(devices)
    return len({tuple(d.coords) for d in devices})


# ----------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------

def abstract_batch(cfg: TrainConfig, model_cfg, sharding) -> Tuple[Dict[str, jax.ShapeDtypeStruct], int]:
    """The phase's global batch at its largest text bucket, as sharded shapes; and that text length."""
    text_len = max(cfg.data.length_buckets or default_buckets(cfg.data.model_max_length))
    shapes = train_batch_shapes(model_cfg, cfg.train.global_batch_size, text_len)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, (shape, dtype) in shapes.items()}, text_len


def _param_counts(params, mask) -> Dict[str, int]:
    sizes = jax.tree_util.tree_map(lambda x: int(np.prod(x.shape)), params)
    pairs = list(zip(jax.tree_util.tree_leaves(sizes), jax.tree_util.tree_leaves(mask)))
    return {"trainable": sum(n for n, t in pairs if t), "frozen": sum(n for n, t in pairs if not t)}


def _bytes(tree) -> Dict[str, int]:
    """Bytes of sharded abstract arrays: in all, and on one device (its shard of each)."""
    leaves = jax.tree_util.tree_leaves(tree)
    size = lambda shape, x: int(np.prod(shape)) * x.dtype.itemsize  # noqa: E731
    return {"total": sum(size(x.shape, x) for x in leaves),
            "per_device": sum(size(x.sharding.shard_shape(x.shape), x) for x in leaves)}


def _memory(compiled) -> Dict[str, int]:
    """Per-device bytes of the compiled step; `peak`: all of it at once (the donated state's outputs
    reuse its argument buffers: the aliased bytes are counted once)."""
    m = compiled.memory_analysis()
    out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
           "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
           "generated_code": m.generated_code_size_in_bytes}
    out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"] + out["generated_code"]
    # The compiler's own figure, from its heap simulation of buffer lifetimes (a buffer freed before
    # another is born does not count twice); `peak` above, all at once, is the bound the plan fits by.
    out["xla_peak"] = getattr(m, "peak_memory_in_bytes", None)
    return out


def plan_phase(cfg: TrainConfig, topology: str, hbm_gib: Optional[float] = None,
               mfu: float = DEFAULT_MFU) -> Dict[str, Any]:
    """Compile phase `cfg`'s train step for `topology` and return the plan (see the module docstring).

    hbm_gib: the HBM of one device, instead of the chip's from `vllama_jax.devices` (without either,
    as for CPU devices, `fits` is None)."""
    devices = topology_devices(topology)
    kind, chips = devices[0].device_kind, chip_count(devices)
    try:
        mesh = make_mesh(cfg.mesh.axes(), devices)
    except ValueError as e:
        raise PlanError(f"--mesh {cfg.mesh.axes()} does not fit --topology {topology} "
                        f"({len(devices)} devices): {e}") from None
    try:
        check_batch_split(cfg, mesh)
    except ValueError as e:
        raise PlanError(f"--global-batch {cfg.train.global_batch_size}: {e}") from None

    model_cfg = cfg.model.resolve()
    steps = max(cfg.train.steps, 1)  # the schedule's length changes no shape
    program = train_program(cfg, model_cfg, mesh, steps)
    state = abstract_state(program.boxed, program.tx, program.shardings)
    batch, text_len = abstract_batch(cfg, model_cfg, program.batch_sharding)

    log.info("compiling the %s train step for %s (%d devices, mesh %s) ...", cfg.name, topology, len(devices),
             dict(mesh.shape))
    spec = device_spec(kind)
    per_device_hbm = hbm_gib * GIB if hbm_gib else None
    if per_device_hbm is None and spec is not None and spec.hbm_gib is not None:
        per_device_hbm = spec.hbm_gib * GIB * chips / len(devices)
    start = time.perf_counter()
    oom = None
    with use_mesh(mesh, LOGICAL_AXIS_RULES):
        try:
            memory = _memory(program.step.lower(state, batch).compile())
        except jax.errors.JaxRuntimeError as e:
            # The TPU compiler refuses a program larger than the chip's HBM: that is the answer "no".
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            oom, memory = str(e).splitlines()[0], None
    compile_s = time.perf_counter() - start
    log.info("compiled in %.1f s%s", compile_s, " (out of memory)" if oom else "")

    flops = program.step_flops(cfg.train.global_batch_size, text_len)
    timing = {"compute_s": None, "memory_s": None, "bound": None}
    est = None
    if spec is not None and spec.peak_flops is not None:
        timing["compute_s"] = flops / (chips * spec.peak_flops)
        est = timing["compute_s"] / mfu
        if memory is not None:
            # Each device reads its state + batch and writes the new state at least once per step.
            timing["memory_s"] = (memory["arguments"] + memory["outputs"]) / (spec.hbm_bandwidth * chips / len(devices))
            timing["bound"] = "compute" if timing["compute_s"] >= timing["memory_s"] else "memory"
            est = max(est, timing["memory_s"])

    return {
        "phase": cfg.name, "preset": cfg.model.preset, "topology": topology, "device_kind": kind,
        "chips": chips, "devices": len(devices), "mesh": dict(mesh.shape),
        "global_batch": cfg.train.global_batch_size, "grad_accum": cfg.train.grad_accum,
        "text_len": text_len, "seq_len": program.seq_len(text_len), "dtype": cfg.model.dtype, "remat": cfg.model.remat,
        "params": _param_counts(nn.unbox(program.boxed), program.mask),
        # Logical sizes (no TPU tile padding): the whole state, and the shard each device holds.
        "state_bytes": _bytes(state), "batch_bytes": _bytes(batch),
        "memory_per_device": None if memory is None else {**{f"{k}_bytes": v for k, v in memory.items()},
                                                          **{f"{k}_gib": v / GIB for k, v in memory.items()
                                                             if v is not None}},
        "compiler_out_of_memory": oom,
        "hbm_per_device_gib": None if per_device_hbm is None else per_device_hbm / GIB,
        "hbm_from": "--hbm-gib" if hbm_gib else (kind if per_device_hbm is not None else None),
        # None where no HBM size is known (CPU devices without --hbm-gib).
        "fits": None if per_device_hbm is None and memory is not None else (
            memory is not None and memory["peak"] <= per_device_hbm),
        "headroom_gib": None if memory is None or per_device_hbm is None else (per_device_hbm - memory["peak"]) / GIB,
        "flops_per_step": flops, "assumed_mfu": mfu, "est_step_time_s": est,
        "roofline": {**timing, "note": "compute_s: the step's matmul FLOPs at the slice's peak; memory_s: reading "
                                       "the step's arguments and writing its outputs once at peak HBM bandwidth"},
        "compile_s": compile_s,
    }
