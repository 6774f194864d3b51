"""The train state, its shardings, and where its params start.

    state = {"params": pytree (float32), "opt_state": optax state, "step": int32 scalar, "rng": uint32 (2,),
             "bad_samples": int32 scalar (rows skipped so far)}

Params are placed by their logical axis names (`vllama_jax/sharding.py`); the Adam moments of a param
take that param's sharding (`optax.tree_map_params`), the rest (counters) is replicated. The abstract
state (shapes + shardings, no memory) is what Orbax restores into, so a resumed run never builds the
state twice.

Initial params: a random init of the whole model, then, in this order, overwritten by
    init.from_phase   the latest checkpoint of another phase's run (<output_root>/<name>)
    init.checkpoint   a released / converted VideoLLaMA 2 folder (`vllama_jax.load`), or a run's output_dir
    init.parts        single parts: {"decoder": HF Mistral/Qwen2 folder, "vision": CLIP/SigLIP folder,
                      "audio": BEATs .pt}
Each source replaces the top-level parts it has ("decoder", "vision", ...); a shape that differs from
the model's is an error naming the path and both shapes.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

import vllama_jax
from vllama_jax.checkpoints.orbax import is_run_dir, read_run_params
from vllama_jax.sharding import logical_to_sharding, shard_params, use_mesh

log = logging.getLogger(__name__)

PART_OF_KIND = {"decoder": "decoder", "vision": "vision", "beats": "audio"}  # vllama_jax.load Part.kind -> part


def state_shardings(boxed_params, tx: optax.GradientTransformation, mesh) -> Dict[str, Any]:
    """NamedShardings of the whole state, from the boxed abstract params (`jax.eval_shape(model.init)`)."""
    param_sh = logical_to_sharding(boxed_params, mesh)
    abstract = nn.unbox(boxed_params)
    replicated = NamedSharding(mesh, PartitionSpec())
    # Frozen params have an empty MaskedNode where trainable ones have their moments.
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    opt_sh = optax.tree_map_params(tx, lambda v, s: v if masked(v) else s, jax.eval_shape(tx.init, abstract),
                                   param_sh, transform_non_params=lambda _: replicated, is_leaf=masked)
    return {"params": param_sh, "opt_state": opt_sh, "step": replicated, "rng": replicated,
            "bad_samples": replicated}


def abstract_state(boxed_params, tx, shardings) -> Dict[str, Any]:
    """ShapeDtypeStructs with shardings for every leaf of the state: a restore target."""
    abstract = nn.unbox(boxed_params)
    shapes = {"params": abstract, "opt_state": jax.eval_shape(tx.init, abstract),
              "step": jax.ShapeDtypeStruct((), jnp.int32), "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
              "bad_samples": jax.ShapeDtypeStruct((), jnp.int32)}
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def new_state(params, tx, shardings, seed: int, compiler_options=None) -> Dict[str, Any]:
    """Step 0: fresh optimizer state (created in its sharded layout) around `params`."""
    opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"], compiler_options=compiler_options)(params)
    put = lambda x, s: jax.device_put(x, s)  # noqa: E731
    return {"params": params, "opt_state": opt_state, "step": put(jnp.int32(0), shardings["step"]),
            "rng": put(jax.random.PRNGKey(seed), shardings["rng"]),
            "bad_samples": put(jnp.int32(0), shardings["bad_samples"])}


# ----------------------------------------------------------------------------------------------------
# Initial params
# ----------------------------------------------------------------------------------------------------

def _overlay(params: dict, source: dict, boxed, mesh, where: str, placed: bool = False) -> dict:
    """`params` with the top-level parts of `source` put in their place: sharded like `boxed`, unless
    `placed` (arrays an Orbax restore already put in this layout)."""
    out = dict(params)
    for part, sub in source.items():
        if part not in params:
            log.warning("%s: part '%s' is not in this model; ignored", where, part)
            continue
        want = jax.tree_util.tree_flatten_with_path(params[part])[0]
        got = dict((jax.tree_util.keystr(kp), x) for kp, x in jax.tree_util.tree_flatten_with_path(sub)[0])
        for kp, x in want:
            key = jax.tree_util.keystr(kp)
            if key not in got:
                raise ValueError(f"{where}: '{part}{key}' is missing")
            if tuple(np.shape(got[key])) != tuple(x.shape):
                raise ValueError(f"{where}: '{part}{key}' has shape {tuple(np.shape(got[key]))}, "
                                 f"the model expects {tuple(x.shape)}")
        if len(got) != len(want):
            extra = sorted(set(got) - {jax.tree_util.keystr(kp) for kp, _ in want})
            raise ValueError(f"{where}: '{part}' has params the model does not: {extra[:5]}")
        if not placed:
            sub = shard_params(jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), sub), mesh,
                               like=boxed[part])
        out[part] = sub
        log.info("%s: loaded '%s'", where, part)
    return out


def _folder_params(path: str) -> dict:
    """Params of a VideoLLaMA 2 folder (all parts) or of one part (an HF decoder/tower folder, a BEATs .pt)."""
    loaded = vllama_jax.load(path, decode_layout="scan")  # training's layout: the layers stacked, as saved
    kind = getattr(loaded, "kind", None)
    if kind is None:  # a whole VideoLLaMA 2 model
        return dict(loaded.params)
    return {PART_OF_KIND[kind]: loaded.params}


def initial_params(init, model, example_batch, boxed, mesh, seed: int, compiler_options=None) -> dict:
    """Random init overwritten by the `init` section's sources (see the module docstring)."""
    shardings = logical_to_sharding(boxed, mesh)
    # Created directly in the sharded layout: no device ever holds the whole model.
    init_fn = jax.jit(lambda rng: nn.unbox(model.init(rng, example_batch)["params"]), out_shardings=shardings,
                      compiler_options=compiler_options)
    with use_mesh(mesh):
        params = init_fn(jax.random.PRNGKey(seed))
    if init.from_phase:
        run = os.path.join(init.output_root, init.from_phase)
        params = _overlay(params, read_run_params(run, shardings), boxed, mesh, f"init.from_phase {run}", placed=True)
    if init.checkpoint:
        run = is_run_dir(init.checkpoint)
        source = read_run_params(init.checkpoint, shardings) if run else _folder_params(init.checkpoint)
        params = _overlay(params, source, boxed, mesh, f"init.checkpoint {init.checkpoint}", placed=run)
    for part, path in init.parts.items():
        source = _folder_params(path)
        if part not in source:
            raise ValueError(f"init.parts.{part}: {path} holds a '{next(iter(source))}', not a '{part}'")
        params = _overlay(params, {part: source[part]}, boxed, mesh, f"init.parts.{part} {path}")
    return params
