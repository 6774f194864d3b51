"""Timing both frameworks the same way, and describing the machine they ran on.

    compile_jax(fn, *args)            -> (compiled fn, compile seconds)   tracing + XLA compilation, paid once
    side_by_side(ours, ref, ...)      -> (Timing, output) of each         warm-up, then alternating timed runs
    round_robin({name: fn}, ...)      -> {name: (Timing, output)}         the same for any number of sides
    copy_bandwidth()                  -> bytes/s                          the machine's memory copy rate
    environment(torch_device)         -> dict                             device_kind, versions, thread counts

A run's time ends when its output is ready: `block_until_ready` for JAX (dispatch is asynchronous),
`torch.cuda.synchronize` for PyTorch on a GPU. The two sides alternate run by run, so a change in the
machine's load (another process waking up) hits both; the figure reported is the median of the runs,
which one stray slow run does not move.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from typing import Any, Callable, List, Optional, Tuple

import jax

from vllama_jax.devices import peak_flops


@dataclasses.dataclass
class Timing:
    runs_s: List[float]
    compile_s: Optional[float] = None  # JAX only: tracing + XLA compilation, paid once per shape

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)

    @property
    def min_s(self) -> float:
        return min(self.runs_s)

    def to_json(self) -> dict:
        d = {"median_s": self.median_s, "min_s": min(self.runs_s), "runs_s": self.runs_s}
        if self.compile_s is not None:
            d["compile_s"] = self.compile_s
        return d


def compile_jax(fn: Callable, *args) -> Tuple[Callable, float]:
    """`jax.jit(fn)` compiled ahead of time for `args`' shapes, and how long that took."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def side_by_side(ours: Callable[[], Any], ref: Callable[[], Any], *, warmup: int, repeats: int,
                 sync: Callable[[], None] = lambda: None, compile_s: Optional[float] = None):
    """`ours()` (a compiled JAX call) and `ref()` (PyTorch, run under `torch.inference_mode`): `warmup`
    untimed calls of each (first calls allocate and pick kernels), then `repeats` timed calls of each,
    alternating. Returns (ours Timing, ours output, ref Timing, ref output)."""
    import torch

    def timed(fn, finish):
        t0 = time.perf_counter()
        out = finish(fn())
        return time.perf_counter() - t0, out

    def finish_ref(out):
        sync()
        return out

    ours_runs, ref_runs = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            timed(ours, jax.block_until_ready)
            timed(ref, finish_ref)
        for _ in range(repeats):
            t, ours_out = timed(ours, jax.block_until_ready)
            ours_runs.append(t)
            t, ref_out = timed(ref, finish_ref)
            ref_runs.append(t)
    return Timing(ours_runs, compile_s), ours_out, Timing(ref_runs), ref_out


def round_robin(fns: dict, *, warmup: int, repeats: int, sync: Callable[[], None] = lambda: None) -> dict:
    """Several sides timed in turn, run by run (so a change of the machine's load hits all of them): JAX
    sides (names not starting with "torch") end at `block_until_ready`, PyTorch sides at `sync()` and run
    under `torch.inference_mode`. The order rotates from run to run, so no side always runs right after
    the same other one (PyTorch's threads may still be busy after its call returns). Returns
    {name: (Timing, output of the last run)}."""
    import torch

    def finish(name, out):
        if name.startswith("torch"):
            sync()
            return out
        return jax.block_until_ready(out)

    runs = {name: [] for name in fns}
    outs = {}
    with torch.inference_mode():
        names = list(fns)
        for i in range(warmup + repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:
                fn = fns[name]
                t0 = time.perf_counter()
                outs[name] = finish(name, fn())
                if i >= warmup:
                    runs[name].append(time.perf_counter() - t0)
    return {name: (Timing(runs[name]), outs[name]) for name in fns}


def copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 3) -> float:
    """Memory bandwidth of a plain copy (numpy, one thread) of `nbytes` (larger than any cache): bytes read
    plus bytes written per second, best of `repeats`. Decoding reads every weight once per step, so weight
    bytes x steps/s over this figure is the fraction of the machine's bandwidth a decoder uses."""
    import numpy as np

    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


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
