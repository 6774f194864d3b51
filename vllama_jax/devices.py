"""What one accelerator can do: peak bf16 FLOP/s, HBM size and bandwidth, keyed by JAX `device_kind`.

The one table the trainer's MFU (`train/loop.py`), the benchmarks (`benchmarks/timing.py`) and the
planner (`train/plan.py`: fits, step-time estimate) read.

    spec = device_spec(jax.devices()[0].device_kind)   # DeviceSpec or None (unknown kind)
    spec.peak_flops, spec.hbm_bandwidth, spec.hbm_gib   # None where unknown (CPU: no peak)
    peak_flops("TPU v5 lite") == 197e12

`device_kind` is what JAX reports, which is not always the marketing name: a v5e is "TPU v5 lite", a
v5p is "TPU v5", a v6e is "TPU v6 lite", an H100 "NVIDIA H100 80GB HBM3". Rows are matched by
case-insensitive substring, first match first, so the specific names come before their prefixes
("TPU v5 lite" before "TPU v5"). Numbers are per device JAX shows (one chip for these kinds), dense
(no sparsity) bf16, as the vendors list them; HBM in GiB as the planner compares it with XLA's
per-device bytes.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    name: str  # short name: "v5p", "H100"
    kind: str  # a substring of JAX's device_kind
    peak_flops: Optional[float]  # dense bf16 FLOP/s
    hbm_bandwidth: Optional[float]  # bytes/s
    hbm_gib: Optional[float]  # memory per device


DEVICES: Tuple[DeviceSpec, ...] = (
    DeviceSpec("H200", "H200", 989e12, 4.8e12, 141),
    DeviceSpec("H100", "H100", 989e12, 3.35e12, 80),
    DeviceSpec("v5e", "TPU v5 lite", 197e12, 0.82e12, 16),
    DeviceSpec("v5e", "TPU v5e", 197e12, 0.82e12, 16),
    DeviceSpec("v5p", "TPU v5p", 459e12, 2.77e12, 95),
    DeviceSpec("v5p", "TPU v5", 459e12, 2.77e12, 95),  # v5p reports "TPU v5"
    DeviceSpec("v6e", "TPU v6 lite", 918e12, 1.64e12, 32),  # Trillium
    DeviceSpec("v6e", "TPU v6e", 918e12, 1.64e12, 32),
    DeviceSpec("v4", "TPU v4", 275e12, 1.2e12, 32),
    DeviceSpec("cpu", "cpu", None, None, None),  # no peak: no MFU; memory is the host's
)


def device_spec(device_kind: str) -> Optional[DeviceSpec]:
    """The first row whose `kind` is in `device_kind` (case-insensitive), or None."""
    return next((d for d in DEVICES if d.kind.lower() in device_kind.lower()), None)


def peak_flops(device_kind: str) -> Optional[float]:
    """Peak bf16 FLOP/s of one device, or None (CPU, unknown kinds): then no MFU is reported."""
    spec = device_spec(device_kind)
    return None if spec is None else spec.peak_flops
