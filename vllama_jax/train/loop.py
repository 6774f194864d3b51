"""The training loop of one phase: data -> sharded train step -> metrics and checkpoints; resumes.

    losses = train(load_train_config("launch/configs/smoke.yaml"))   # {step: loss}

Every process runs this same program (multi-host: after `jax.distributed.initialize`). Each reads
only its rows of every global batch; `shard_batch` assembles the global batch across processes with
`jax.make_array_from_process_local_data`. Only process 0 writes metrics and shows the progress bar.

On start, the latest checkpoint in `<output_dir>/checkpoints` is restored if there is one (params,
optimizer state, step, RNG, data position), else the state is built from the `init` section. On
SIGTERM (a preemption notice), the loop saves at the end of the current step and returns.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from vllama_jax.checkpoints.orbax import Checkpointer
from vllama_jax.loading import boxed_abstract_params
from vllama_jax.models.sequence import FBANK_FRAMES, dummy_batch, pad_text_to, spliced_length
from vllama_jax.models.videollama2 import VideoLLaMA2
from vllama_jax.sharding import LOGICAL_AXIS_RULES, batch_sharding, make_mesh, shard_batch, use_mesh
from vllama_jax.train.config import TrainConfig
from vllama_jax.devices import peak_flops
from vllama_jax.train.flops import matmul_params, train_step_flops
from vllama_jax.train.metrics import MetricsWriter
from vllama_jax.train.optimizer import check_patterns, lr_schedule, make_optimizer, trainable_mask
from vllama_jax.train.state import abstract_state, initial_params, new_state, state_shardings
from vllama_jax.train.step import make_train_step, router_loss_weight

log = logging.getLogger(__name__)


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (then it saves and stops)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint after this step")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def total_steps(cfg: TrainConfig, num_rows: int) -> int:
    if cfg.train.steps > 0:
        return cfg.train.steps
    return max(1, math.ceil(cfg.train.epochs * num_rows / cfg.train.global_batch_size))


def check_batch_split(cfg: TrainConfig, mesh) -> None:
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = cfg.train.global_batch_size // cfg.train.grad_accum
    if micro % batch_devices:
        raise ValueError(f"a micro-batch of {micro} samples (train.global_batch_size / train.grad_accum) does not "
                         f"split over the {batch_devices} devices of the mesh's data x fsdp axes")


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """A phase's model, optimizer and jitted train step on a mesh: what `train` runs, and what `plan`
    compiles for a TPU topology it does not have (vllama_jax/train/plan.py)."""

    model: VideoLLaMA2
    boxed: Any  # abstract params, boxed with their logical axis names
    mask: Any  # like the params: True where a param trains
    tx: optax.GradientTransformation
    shardings: Dict[str, Any]  # of the train state
    batch_sharding: NamedSharding
    step: Callable  # (state, batch) -> (state, metrics); the state is donated
    matmul_params: Dict[str, int]  # per top-level part, for the FLOPs estimate

    def seq_len(self, text_len: int) -> int:
        """L', the length the decoder sees: `text_len` with the placeholder replaced by the media tokens."""
        cfg = self.model.config
        return spliced_length(cfg, text_len, cfg.vision is not None, FBANK_FRAMES if cfg.audio is not None else None)

    def step_flops(self, batch_size: int, text_len: int) -> float:
        """Estimated FLOPs of one step over `batch_size` samples padded to `text_len` text tokens."""
        trains = {part: any(jax.tree_util.tree_leaves(sub)) for part, sub in self.mask.items()}
        return train_step_flops(self.model.config, self.matmul_params, trains, batch_size, self.seq_len(text_len))


def train_program(cfg: TrainConfig, model_cfg, mesh, steps: int) -> TrainProgram:
    """Build (without allocating anything) the model, optimizer and train step of phase `cfg` on `mesh`."""
    model = VideoLLaMA2(model_cfg, dtype=jnp.dtype(cfg.model.dtype), param_dtype=jnp.float32,
                        remat_policy=cfg.model.remat)
    boxed = boxed_abstract_params(model, dummy_batch(model_cfg))
    check_patterns(nn.unbox(boxed), cfg.optimizer.trainable)
    mask = trainable_mask(nn.unbox(boxed), cfg.optimizer.trainable)
    tx = make_optimizer(cfg.optimizer, steps, mask)
    shardings = state_shardings(boxed, tx, mesh)
    batch_sh = batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    step = jax.jit(
        make_train_step(model, tx, mask, lr_schedule(cfg.optimizer.learning_rate, steps, cfg.optimizer.warmup_ratio),
                        cfg.train.grad_accum, batch_spec=batch_sh.spec,
                        router_aux_loss_coef=router_loss_weight(model_cfg)),
        in_shardings=(shardings, batch_sh), out_shardings=(shardings, replicated), donate_argnums=0,
        compiler_options=cfg.train.compiler_options())
    return TrainProgram(model, boxed, mask, tx, shardings, batch_sh, step, matmul_params(nn.unbox(boxed)))


def _agree_on_length(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Every process pads its text to the longest bucket any process picked (one global shape)."""
    if jax.process_count() == 1:
        return batch
    from jax.experimental import multihost_utils
    length = int(np.max(multihost_utils.process_allgather(np.int32(batch["input_ids"].shape[1]))))
    return pad_text_to(batch, length)


def train(cfg: TrainConfig, data) -> Dict[int, float]:
    """Run (or resume) the phase `cfg` describes on `data`, this process's batches (data_pipelines'
    `TrainData`: `num_rows`, and `iterator(start)` yielding the batches from global batch `start` on, with
    `start_prefetch()` / `close()`); returns {step: loss} of the steps this call ran."""
    process_index, process_count = jax.process_index(), jax.process_count()
    model_cfg = cfg.model.resolve()
    mesh = make_mesh(cfg.mesh.axes())
    check_batch_split(cfg, mesh)
    steps = total_steps(cfg, data.num_rows)

    # The data position first, so the first batches decode while the model state is built or restored.
    ckpt = Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), cfg.checkpoint.every, cfg.checkpoint.keep,
                        cfg.checkpoint.async_save)
    start = ckpt.latest_step() or 0
    iterator = data.iterator()
    if start and not ckpt.restore_data(start, iterator):
        iterator = data.iterator(start)  # batch k is the k-th element: the step is the position
    iterator.start_prefetch()

    program = train_program(cfg, model_cfg, mesh, steps)
    shardings = program.shardings
    if start:
        state = ckpt.restore(start, abstract_state(program.boxed, program.tx, shardings))
        log.info("resumed %s at step %d", cfg.output_dir, start)
    else:
        options = cfg.train.compiler_options()
        params = initial_params(cfg.init, program.model, dummy_batch(model_cfg), program.boxed, mesh,
                                cfg.train.seed, options)
        state = new_state(params, program.tx, shardings, cfg.train.seed, options)
    step_fn = program.step
    # For MFU: the FLOPs of a step depend on the text bucket, so they are computed per logged step.
    peak = peak_flops(jax.devices()[0].device_kind)

    writer = MetricsWriter(cfg.output_dir, enabled=process_index == 0)
    if process_index == 0:
        with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as f:
            f.write(cfg.to_yaml())  # the config this run used, defaults and overrides included
    bar = None
    if process_index == 0 and cfg.train.progress_bar:
        from tqdm import tqdm
        bar = tqdm(total=steps, initial=start, desc=cfg.name, disable=not sys.stderr.isatty())
    losses: Dict[int, float] = {}
    pending = None  # (step, metrics, text length): fetched after the next step is dispatched
    last = time.perf_counter()

    def log_step(step, metrics, length):
        nonlocal last
        m = jax.device_get(metrics)  # waits for the step
        now = time.perf_counter()
        dt, last = now - last, now
        flops = program.step_flops(cfg.train.global_batch_size, length)
        row = {"loss": float(m["loss"]), "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
               "tokens": float(m["tokens"]), "tokens_per_s": float(m["tokens"]) / dt, "step_time_s": dt,
               "mfu": flops / (dt * jax.device_count() * peak) if peak else None,
               "bad_samples": int(m["bad_samples"]), "bad_samples_total": int(m["bad_samples_total"])}
        losses[step] = row["loss"]
        if step % cfg.train.log_every == 0 or step == steps:
            writer.write(step, row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", bad=row["bad_samples_total"])

    with use_mesh(mesh, LOGICAL_AXIS_RULES), _Preemption() as preemption:
        for step in range(start + 1, steps + 1):
            local = _agree_on_length(next(iterator))
            length = local["input_ids"].shape[1]
            state, metrics = step_fn(state, shard_batch(local, mesh))
            if pending is not None:
                log_step(*pending)
            pending = (step, metrics, length)
            stop = preemption.requested or (process_count > 1 and ckpt.reached_preemption(step))
            if stop or step == steps or step % cfg.checkpoint.every == 0:
                log_step(*pending)  # the checkpoint's metrics are written before the checkpoint
                pending = None
                ckpt.save(step, state, iterator, force=True)
            if stop:
                log.warning("stopped at step %d for preemption; the next start resumes here", step)
                break
        if pending is not None:
            log_step(*pending)
    ckpt.wait()
    ckpt.close()
    writer.close()
    if bar is not None:
        bar.close()
    if hasattr(iterator, "close"):
        iterator.close()
    return losses
