"""Training checkpoints with Orbax: params, optimizer state, step, RNG and the data iterator together.

    ckpt = Checkpointer(f"{out_dir}/checkpoints", every=500, keep=2)
    ckpt.save(step, state, data_iterator)               # async; atomic
    ckpt.restore_data(ckpt.latest_step(), data_iterator) # the iterator's position (per process)
    state = ckpt.restore(ckpt.latest_step(), abstract_state)
    params = read_run_params("runs/video_pretrain", like=abstract_params)   # the next phase starts here

A checkpoint `<dir>/<step>/` holds three items:

    params   the param pytree (float32 master copy), one sharded array per leaf
    train    everything else: {"opt_state", "step", "rng", "bad_samples"}
    data     the grain iterator state, one JSON file per process (grain.checkpoint.CheckpointHandler)

Params are their own item so that another phase can read them without this phase's optimizer state.
Orbax writes into a temporary folder and renames it when every process has finished: a run killed
during a save leaves the previous checkpoint as the latest. Saves are asynchronous: device arrays
are copied to host, then written in a background thread while training goes on.

Restoring takes an abstract target (`jax.ShapeDtypeStruct`s with shardings), so every array lands
directly in the current mesh's layout, whatever the mesh or the number of processes that wrote it.
The data item is per process: when the process count changed, the caller positions the data
itself (its position is the step).
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

log = logging.getLogger(__name__)


def _item_handlers() -> dict:
    """A handler for each of the three items (a reader that knew fewer would warn about the others)."""
    import grain
    return {"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler()}


class Checkpointer:
    def __init__(self, directory: str, every: int = 500, keep: Optional[int] = 2, async_save: bool = True):
        self.directory = directory if "://" in directory else os.path.abspath(directory)  # gs://... as is
        options = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=keep,
                                               enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_item_handlers())

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, data_iterator, force: bool = False) -> bool:
        """Save at `step` when it is a multiple of `every` (or `force`); returns whether it saved."""
        import grain
        train = {k: v for k, v in state.items() if k != "params"}
        args = ocp.args.Composite(params=ocp.args.StandardSave(state["params"]), train=ocp.args.StandardSave(train),
                                  data=grain.checkpoint.CheckpointSave(data_iterator))
        return self.manager.save(step, args=args, force=force)

    def restore_data(self, step: int, data_iterator) -> bool:
        """Set `data_iterator` (a grain DatasetIterator) to its position at `step` and start its prefetching.
        False when this process has no saved position (the checkpoint was written by another number of
        processes): the caller then positions the data itself."""
        import grain
        try:
            self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator)))
            return True
        except (ValueError, FileNotFoundError, KeyError) as e:
            log.warning("data iterator state not restored from step %d (%s); positioning it from the step", step, e)
            return False

    def restore(self, step: int, abstract_state: dict) -> dict:
        """The state at `step`, each array placed as its `abstract_state` leaf (ShapeDtypeStruct + sharding) says."""
        abstract_train = {k: v for k, v in abstract_state.items() if k != "params"}
        got = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state["params"]), train=ocp.args.StandardRestore(abstract_train)))
        return {"params": got["params"], **got["train"]}

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def run_checkpoint_dir(run_dir: str) -> str:
    """A run's output_dir -> its checkpoint folder (a folder of step subfolders is accepted as is)."""
    sub = os.path.join(run_dir, "checkpoints")
    return sub if os.path.isdir(sub) else run_dir


def is_run_dir(path: str) -> bool:
    d = run_checkpoint_dir(path)
    return os.path.isdir(d) and any(name.isdigit() for name in os.listdir(d))


def read_run_params(run_dir: str, shardings=None, step: Optional[int] = None):
    """The params of another run's latest (or given) checkpoint, as saved (whatever parts its model had).

    `shardings`: a NamedSharding pytree for (some of) the params, matched by path; params it does not
    cover are replicated on the first sharding's mesh, or left on the default device without one."""
    directory = run_checkpoint_dir(run_dir)
    manager = ocp.CheckpointManager(directory, item_handlers=_item_handlers(), options=ocp.CheckpointManagerOptions(
        read_only=True, save_interval_steps=0, create=False))  # what read_only implies, said (Orbax warns otherwise)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to start from")
    saved = manager.item_metadata(step)["params"]
    flat_shardings = {}
    mesh = None
    if shardings is not None:
        for kp, s in jax.tree_util.tree_flatten_with_path(shardings)[0]:
            flat_shardings[jax.tree_util.keystr(kp)] = s
            mesh = s.mesh
    default = NamedSharding(mesh, PartitionSpec()) if mesh is not None else \
        jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(kp, meta):
        return jax.ShapeDtypeStruct(tuple(meta.shape), np.dtype(meta.dtype),
                                    sharding=flat_shardings.get(jax.tree_util.keystr(kp), default))

    abstract = jax.tree_util.tree_map_with_path(target, saved)
    params = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))["params"]
    manager.close()
    log.info("read params of %s step %d", directory, step)
    return params
