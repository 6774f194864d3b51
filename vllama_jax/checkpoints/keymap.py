"""Map checkpoint keys (HF / PyTorch names) to our param tree, and back.

A `KeyMap` is a table of entries `(hf_key, path, transform, layer)`:

    hf_key     the released name, e.g. `model.layers.3.self_attn.q_proj.weight`
    path       where it goes in our nested params, e.g. `("decoder", "layers", "self_attn", "q_proj", "kernel")`
    transform  how a PyTorch tensor becomes ours (`linear`: transpose (out, in) -> (in, out), ...)
    layer      for stacked params (a scanned layer stack, Mixtral's experts): the index on the stacked
               leading axis, or a tuple of indices for several stacked axes (layer, expert); else None

Each model file builds its own table (`hf_key_map(config, prefix)`); `to_params` converts a state dict
with it and checks everything against the model's expected shapes: a missing, unexpected or mis-shaped
key is a `CheckpointError` naming the key and both shapes. `to_state_dict` is the inverse (export).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: names the file, the key and the shapes."""


# --- transforms: PyTorch layout -> ours, each with its inverse ---------------------------------------

def _identity(x):
    return x


def _linear(x):  # nn.Linear.weight (out, in) -> kernel (in, out)
    return np.ascontiguousarray(np.transpose(x))


def _conv(x):  # ConvNd.weight (out, in, *k) -> (*k, in, out), Flax's layout
    n = x.ndim
    return np.ascontiguousarray(np.transpose(x, tuple(range(2, n)) + (1, 0)))


def _conv_inv(x):
    n = x.ndim
    return np.ascontiguousarray(np.transpose(x, (n - 1, n - 2) + tuple(range(n - 2))))


TRANSFORMS: Dict[str, Tuple[Callable, Callable]] = {
    "identity": (_identity, _identity),
    "linear": (_linear, _linear),
    "conv": (_conv, _conv_inv),
}


@dataclasses.dataclass(frozen=True)
class Entry:
    hf_key: str
    path: Tuple[str, ...]
    transform: str = "identity"
    layer: Optional[Tuple[int, ...]] = None  # indices on the stacked leading axes


class KeyMap:
    """An ordered table of `Entry`s; build with `add`, combine with `+`."""

    def __init__(self, entries: Iterable[Entry] = ()):
        self.entries: List[Entry] = list(entries)

    def add(self, hf_key: str, path: Sequence[str], transform: str = "identity",
            layer: Optional[Union[int, Tuple[int, ...]]] = None):
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform}")
        if isinstance(layer, int):
            layer = (layer,)
        self.entries.append(Entry(hf_key, tuple(path), transform, layer))
        return self

    def __add__(self, other: "KeyMap") -> "KeyMap":
        return KeyMap(self.entries + other.entries)

    def __len__(self):
        return len(self.entries)

    def hf_keys(self) -> List[str]:
        return [e.hf_key for e in self.entries]

    def with_prefix(self, hf_prefix: str = "", path_prefix: Sequence[str] = ()) -> "KeyMap":
        return KeyMap(Entry(hf_prefix + e.hf_key, tuple(path_prefix) + e.path, e.transform, e.layer)
                      for e in self.entries)


def flatten(tree: Mapping, prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], object]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping[Tuple[str, ...], object]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def _shape(x) -> Tuple[int, ...]:
    return tuple(getattr(x, "shape", ()))


def to_params(state_dict: Mapping[str, np.ndarray], keymap: KeyMap, expected: Mapping,
              source: str = "checkpoint", allow_unexpected: Iterable[str] = (), dtype=None) -> dict:
    """Convert `state_dict` (HF name -> array) to our nested params.

    `expected` is our param tree of shapes (`jax.eval_shape(model.init, ...)['params']`, unboxed) and
    must be covered exactly: every leaf filled, every shape right. Keys of `state_dict` that the map
    does not name are errors unless they start with one of `allow_unexpected` (buffers such as
    `position_ids`, or parts that another map will read). `dtype` casts every array (default: keep).
    """
    exp_flat = flatten(expected)
    missing = [e.hf_key for e in keymap.entries if e.hf_key not in state_dict]
    if missing:
        shown = ", ".join(missing[:8]) + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else "")
        raise CheckpointError(f"{source}: missing key(s) {shown}")
    named = set(keymap.hf_keys())
    allow = tuple(allow_unexpected)
    unexpected = [k for k in state_dict if k not in named and not (allow and k.startswith(allow))]
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:8]) + (f" (and {len(unexpected) - 8} more)" if len(unexpected) > 8 else "")
        raise CheckpointError(f"{source}: unexpected key(s) {shown}")

    stacks: Dict[Tuple[str, ...], Dict[Tuple[int, ...], Tuple[Entry, np.ndarray]]] = {}
    flat: Dict[Tuple[str, ...], np.ndarray] = {}
    for e in keymap.entries:
        if e.path not in exp_flat:
            raise CheckpointError(f"{source}: key {e.hf_key} maps to {'/'.join(e.path)}, which the model does not have")
        arr = TRANSFORMS[e.transform][0](np.asarray(state_dict[e.hf_key]))
        if dtype is not None:
            arr = arr.astype(dtype)
        want = _shape(exp_flat[e.path])
        if e.layer is not None:
            want = want[len(e.layer):]
        if arr.shape != want:
            at = "/".join(e.path) + ("" if e.layer is None else str(list(e.layer)))
            raise CheckpointError(f"{source}: key {e.hf_key} has shape {tuple(np.shape(state_dict[e.hf_key]))} "
                                  f"(as ours {arr.shape}), the model expects {want} at {at}")
        if e.layer is None:
            flat[e.path] = arr
        else:
            stacks.setdefault(e.path, {})[e.layer] = (e, arr)
    for path, parts in stacks.items():
        full = _shape(exp_flat[path])
        n = len(next(iter(parts)))
        wanted = set(np.ndindex(*full[:n]))
        if set(parts) != wanted:
            gaps = sorted(wanted - set(parts))[:4]
            raise CheckpointError(f"{source}: {'/'.join(path)} stacks {full[:n]} entries; the checkpoint lacks "
                                  f"{gaps} (or has extra ones)")
        out = np.empty(full, dtype=next(iter(parts.values()))[1].dtype)
        for idx, (_, arr) in parts.items():
            out[idx] = arr
        flat[path] = out
    not_filled = [p for p in exp_flat if p not in flat]
    if not_filled:
        raise CheckpointError(f"{source}: no key fills param(s) " + ", ".join("/".join(p) for p in not_filled[:8]))
    return unflatten(flat)


def to_state_dict(params: Mapping, keymap: KeyMap) -> Dict[str, np.ndarray]:
    """The inverse of `to_params`: our params -> HF names and PyTorch layouts (for export)."""
    flat = flatten(params)
    out = {}
    for e in keymap.entries:
        arr = np.asarray(flat[e.path])
        if e.layer is not None:
            arr = arr[tuple(e.layer)]
        out[e.hf_key] = TRANSFORMS[e.transform][1](arr)
    return out
