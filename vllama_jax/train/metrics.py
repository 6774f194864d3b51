"""Training metrics to `<out_dir>/metrics.jsonl` and TensorBoard, written by process 0 only.

One JSON object per logged step: `{"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s",
"step_time_s", "mfu", "bad_samples", "bad_samples_total"}` (`mfu` is null on devices without a known
peak, such as CPU). A resumed run appends: steps redone after a preemption appear again, and the
later line is the one that counts.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional


class MetricsWriter:
    def __init__(self, out_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self._jsonl = open(os.path.join(out_dir, "metrics.jsonl"), "a")
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))

    def write(self, step: int, metrics: Dict[str, Optional[float]]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: (None if v is None else float(v)) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if v is not None:
                    self._tb.add_scalar(f"train/{k}", float(v), int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(out_dir: str) -> Dict[int, dict]:
    """step -> the last logged row of that step (what a resumed run ended up with)."""
    rows: Dict[int, dict] = {}
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[row["step"]] = row
    return rows
