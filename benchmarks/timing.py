"""Timing both frameworks the same way, and describing the machine they ran on.

    time_jax(fn, *args)     -> (Timing, output)   compile (lower + compile) timed apart, then warm-up, then runs
    time_torch(fn, sync)    -> (Timing, output)   warm-up (first calls allocate), then runs
    environment(torch_dev)  -> dict               device_kind, versions, thread counts

A run's time ends when its output is ready: `block_until_ready` for JAX (dispatch is asynchronous),
`torch.cuda.synchronize` for PyTorch on a GPU. The figure reported is the median of the runs, which a
stray slow run (another process waking up) does not move.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from typing import Callable, List, Optional

import jax


@dataclasses.dataclass
class Timing:
    runs_s: List[float]
    compile_s: Optional[float] = None  # JAX only: tracing + XLA compilation, paid once per shape

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)

    def to_json(self) -> dict:
        d = {"median_s": self.median_s, "min_s": min(self.runs_s), "runs_s": self.runs_s}
        if self.compile_s is not None:
            d["compile_s"] = self.compile_s
        return d


def time_jax(fn: Callable, *args, warmup: int, repeats: int):
    """`fn(*args)` jitted: compile once (timed), `warmup` untimed calls, `repeats` timed calls."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = None
    for _ in range(warmup):
        out = jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    return Timing(runs, compile_s), out


def time_torch(fn: Callable, *, warmup: int, repeats: int, sync: Callable[[], None] = lambda: None):
    """`fn()` under `torch.inference_mode`: `warmup` untimed calls, `repeats` timed calls."""
    import torch

    out = None
    with torch.inference_mode():
        for _ in range(warmup):
            out = fn()
        sync()
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            sync()
            runs.append(time.perf_counter() - t0)
    return Timing(runs), out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(torch_device: str) -> dict:
    """What the figures depend on. XLA's CPU backend uses one thread per available CPU unless XLA_FLAGS
    says otherwise; PyTorch uses `torch.get_num_threads()` (by default the physical cores)."""
    import flax
    import jaxlib
    import numpy
    import torch
    import transformers

    from vllama_jax.train.flops import peak_flops

    dev = jax.devices()[0]
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count()
    return {
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "num_devices": jax.device_count(),
        "peak_flops": peak_flops(dev.device_kind),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": cpus,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "torch_device": torch_device,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
