"""Meshes, the logical-axis rules table, and the shardings of params, batches and caches.

Models name every param axis and block-boundary activation axis logically (`embed`, `mlp`, `heads`,
`vocab`, `expert`, `batch`, ...). `LOGICAL_AXIS_RULES` maps those names onto four mesh axes:

    data     pure data parallelism: the batch is split, params are replicated
    fsdp     the batch is split AND every param that grows with the model is split: on its `embed`
             axis, or, for convolutions (vision patch embedding, STC connector, BEATs), on its output
             channels (`conv_out`, else `conv_in`); gathered per layer by XLA
    tensor   Megatron-style tensor parallelism: heads, MLP width and vocab are split
    expert   Mixtral's experts are split (activations are replicated across it: use it for MoE models)

Changing the parallelism means changing the mesh shape (or this table), never model code.

Params are resolved with their shapes (`param_spec`): rules are tried in order, and a rule whose mesh
axes do not divide the dimension is passed over (logged once), so a later rule for the same name can
place it (`conv_in` when `conv_out` does not divide), or it stays whole. A sharding is thus always
valid, at worst a larger one (tiny test models, 8 kv heads on a tensor axis of 16).

Typical use, the same on one host or many (every process runs the same program):

    mesh = make_mesh({"data": -1, "fsdp": 4, "tensor": 2})
    with use_mesh(mesh):                       # jax.set_mesh + flax logical axis rules
        params = shard_params(params, mesh, like=abstract_params)
        batch = shard_batch(local_batch, mesh)  # this process's rows -> one global array
        logits = jax.jit(step)(params, batch)
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import Any, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor", "expert")

# (logical name, mesh axis or axes or None). Order is priority: a mesh axis already taken by an earlier
# rule for the same array is not reused (so an activation's `batch` keeps `fsdp`, and weights alone
# split their `embed` axis over it).
LOGICAL_AXIS_RULES: Tuple[Tuple[str, Any], ...] = (
    # activations and caches
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),  # activations between blocks stay whole across `tensor`
    ("cache_length", None),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    # params
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("embed", "fsdp"),
    ("layers", None),  # the scanned layer stack: every device holds its slice of every layer
    ("norm", None),
    # Convolutions (vision patch embedding, STC connector, BEATs). The STC connector's RegStage convs
    # and sampler are hidden x hidden (the 72B's sampler is 2 x 2 x 2 x 8192 x 8192; its connector has
    # 1.9B params, 22 GiB with Adam moments): replicated, they would be the largest share of a large
    # model's per-device state under FSDP. Output channels first (a depthwise conv has one input channel
    # per group), the input channels where the output channels do not divide.
    ("conv_out", "fsdp"),
    ("conv_in", "fsdp"),
    ("conv_k", None),
    ("conv_t", None),  # a conv kernel's spatial axes (time, height, width): distinct names, since Flax
    ("conv_h", None),  # refuses a name repeated within one array
    ("conv_w", None),
)


def make_mesh(shape: Mapping[str, int], devices: Optional[Sequence[Any]] = None) -> jax.sharding.Mesh:
    """A mesh with the axes `MESH_AXES` (in that order; those not in `shape` get size 1).

    shape: {"data": -1, "fsdp": 1, "tensor": 1, "expert": 1}; one axis may be -1 for "the remaining
    devices". devices: default all devices (every host's, in multi-host runs).
    """
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; known: {MESH_AXES}")
    devices = list(jax.devices() if devices is None else devices)
    sizes = {name: int(shape.get(name, 1)) for name in MESH_AXES}
    free = [n for n, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh shape {dict(shape)}: at most one axis may be -1")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(f"mesh shape {dict(shape)}: {len(devices)} devices are not a multiple of {fixed}")
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(f"mesh shape {sizes} needs {math.prod(sizes.values())} devices, there are {len(devices)}")
    # Auto axes: sharding follows the logical constraints and XLA's propagation (jax 0.10 defaults to
    # Explicit axes, which Linen's logical constraints do not use).
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(tuple(sizes.values()), MESH_AXES, axis_types=axis_types, devices=devices)
    except NotImplementedError as e:
        # jax lays the axes along the slice's torus, and some shapes do not tile it (fsdp=32, tensor=4
        # on a v6e 8x16). The mesh is still valid with the devices in order, only less local.
        log.warning("mesh %s does not tile the devices' physical torus (%s); devices assigned in order, "
                    "so an axis may span more links", sizes, str(e).splitlines()[0])
        return jax.sharding.Mesh(np.asarray(devices, dtype=object).reshape(tuple(sizes.values())), MESH_AXES,
                                 axis_types=axis_types)


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES):
    """Make `mesh` current (`jax.set_mesh`) and `rules` the Flax logical axis rules, so the models'
    `nn.with_logical_constraint` calls on activations take effect inside `jax.jit`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


@functools.lru_cache(maxsize=None)
def _note_unsplit(name: str, dim: int, axes: Tuple[str, ...], size: int) -> None:
    log.info("logical axis '%s' of size %d does not divide over mesh axes %s (%d devices): not split there",
             name, dim, axes, size)


def param_spec(logical_axes: Sequence[Optional[str]], shape: Sequence[int], mesh: jax.sharding.Mesh,
               rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
    """The PartitionSpec of one array of `shape` with logical axis names `logical_axes`, on `mesh`.

    As Flax's `logical_to_mesh_axes` (rules in priority order, each mesh axis used once per array), but
    shape-aware: a rule whose mesh axes do not divide the dimension is skipped, so that the next rule
    for the same logical name applies (or none: the dimension stays whole). Mesh axes the mesh lacks
    are dropped."""
    out: list = [None] * len(shape)
    assigned = [name is None for name in logical_axes]
    used: set = set()
    for rule_name, rule_axes in rules:
        for pos, name in enumerate(logical_axes):
            if name != rule_name or assigned[pos]:
                continue
            axes = () if rule_axes is None else ((rule_axes,) if isinstance(rule_axes, str) else tuple(rule_axes))
            axes = tuple(a for a in axes if a in mesh.shape)
            if used.intersection(axes):
                continue  # taken by a higher-priority dimension of this array: a later rule may apply
            size = math.prod(mesh.shape[a] for a in axes)
            if shape[pos] % size:
                _note_unsplit(name, int(shape[pos]), axes, size)
                continue
            assigned[pos] = True
            used.update(axes)
            out[pos] = None if not axes else (axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def named_sharding(mesh: jax.sharding.Mesh, logical_axes: Optional[Sequence[Optional[str]]], shape: Sequence[int],
                   rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    """The NamedSharding of one array of `shape` whose axes have the logical names `logical_axes`
    (None: replicated), e.g. `named_sharding(mesh, decoder.CACHE_AXES, cache["k"].shape)`."""
    if logical_axes is None:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, param_spec(tuple(logical_axes), tuple(shape), mesh, rules))


def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def _values(tree):
    """Boxes -> their arrays (without the sharding constraint that `nn.unbox` adds under a mesh)."""
    return jax.tree_util.tree_map(lambda x: x.value if _is_box(x) else x, tree, is_leaf=_is_box)


def logical_to_sharding(boxed_or_abstract_params, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedSharding pytree for a param tree whose leaves are `nn.LogicallyPartitioned` boxes: the output
    of `model.init` or of `jax.eval_shape(model.init, ...)` (no memory). Unboxed leaves are replicated.
    The result has the structure of the unboxed tree, ready for `jax.jit(in_shardings=...)`."""
    def one(x):
        if _is_box(x):
            return named_sharding(mesh, x.names, x.value.shape, rules)
        return NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(one, boxed_or_abstract_params, is_leaf=_is_box)


def _put(x, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array) and (sharding.is_fully_addressable or not x.is_fully_addressable):
        return jax.device_put(x, sharding)  # already on devices: a reshard
    # Host data (e.g. a checkpoint read by every process): each device takes just its own block, which
    # also works when the mesh spans hosts.
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_params(params, mesh: jax.sharding.Mesh, like=None, rules=LOGICAL_AXIS_RULES):
    """Place params on `mesh`, each per its logical axis names. `params` is either boxed (straight from
    `model.init`) or plain arrays (numpy from a checkpoint, jax arrays) with `like` the boxed or abstract
    tree that names their axes (`jax.eval_shape(model.init, ...)["params"]`). Returns plain jax Arrays."""
    boxed = params if like is None else like
    shardings = logical_to_sharding(boxed, mesh, rules)
    return jax.tree_util.tree_map(_put, _values(params), shardings)


def sharded_init(model: nn.Module, rng, *args, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES, **kwargs):
    """`model.init(rng, *args)["params"]` created directly in its sharded layout (no device ever holds
    the whole model). Returns plain (unboxed) params."""
    abstract = jax.eval_shape(lambda r: model.init(r, *args, **kwargs)["params"], rng)
    shardings = logical_to_sharding(abstract, mesh, rules)
    init = jax.jit(lambda r: nn.unbox(model.init(r, *args, **kwargs)["params"]), out_shardings=shardings)
    with use_mesh(mesh, rules):
        return init(rng)


def batch_sharding(mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    """Leading (batch) axis split over the mesh axes of logical `batch` (data x fsdp), the rest whole."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), rules))


def shard_batch(batch, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES):
    """A pytree of this process's rows (numpy, leading axis = local batch) -> global jax Arrays split
    over the batch axes. On one host this is a device_put; on many, each process passes its own rows
    and the global batch is their concatenation in process order."""
    sharding = batch_sharding(mesh, rules)
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def describe(shardings, max_rows: int = 50) -> str:
    """A readable table `path: PartitionSpec`, for logs and `plan`."""
    rows = [f"{jax.tree_util.keystr(path)}: {s.spec}"
            for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]]
    return "\n".join(rows[:max_rows] + ([f"... ({len(rows) - max_rows} more)"] if len(rows) > max_rows else []))
