"""Map checkpoint keys (HF / PyTorch names) to our param tree, and back.

A `KeyMap` is a table of entries `(hf_key, path, transform, layer)`:

    hf_key     the released name, e.g. `model.layers.3.self_attn.q_proj.weight`
    path       where it goes in our nested params, e.g. `("decoder", "layers", "self_attn", "q_proj", "kernel")`
    transform  how a PyTorch tensor becomes ours (`linear`: transpose (out, in) -> (in, out), ...)
    layer      for stacked params (a scanned layer stack, Mixtral's experts): the index on the stacked
               leading axis, or a tuple of indices for several stacked axes (layer, expert); else None

Entries that share a `path` (and have no `layer`) are tied copies of one tensor: BEATs writes its one
relative-position table under every layer's name. Loading needs one of them (all present must be equal);
export writes every name.

Besides the entries, a table carries
    unused     {hf_key: shape}: tensors the original writes that the model never reads (SigLIP's pooling
               head): read, checked for shape and set aside on load, written back on export
    ignored    prefixes of buffers that hold no weights (`position_ids`, RoPE's `inv_freq`)

Each model file builds its own table (`hf_key_map(config, prefix)`); `to_params` converts a state dict
with it and checks everything against the model's expected shapes: a missing, unexpected or mis-shaped
key is a `CheckpointError` naming the file, the key and both shapes. `to_state_dict` is the inverse
(export). checkpoints/release.py composes the tables of a whole VideoLLaMA 2 checkpoint.
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
    """An ordered table of `Entry`s (+ `unused` shapes and `ignored` prefixes); build with `add`,
    `add_unused`, `ignore`; combine with `+`."""

    def __init__(self, entries: Iterable[Entry] = (), unused: Optional[Mapping[str, Tuple[int, ...]]] = None,
                 ignored: Iterable[str] = ()):
        self.entries: List[Entry] = list(entries)
        self.unused: Dict[str, Tuple[int, ...]] = dict(unused or {})
        self.ignored: Tuple[str, ...] = tuple(ignored)

    def add(self, hf_key: str, path: Sequence[str], transform: str = "identity",
            layer: Optional[Union[int, Tuple[int, ...]]] = None):
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform}")
        if isinstance(layer, int):
            layer = (layer,)
        self.entries.append(Entry(hf_key, tuple(path), transform, layer))
        return self

    def add_unused(self, hf_key: str, shape: Sequence[int]):
        self.unused[hf_key] = tuple(shape)
        return self

    def ignore(self, *prefixes: str):
        self.ignored += prefixes
        return self

    def __add__(self, other: "KeyMap") -> "KeyMap":
        return KeyMap(self.entries + other.entries, {**self.unused, **other.unused}, self.ignored + other.ignored)

    def __len__(self):
        return len(self.entries)

    def hf_keys(self) -> List[str]:
        return [e.hf_key for e in self.entries]

    def with_prefix(self, hf_prefix: str = "", path_prefix: Sequence[str] = ()) -> "KeyMap":
        return KeyMap((Entry(hf_prefix + e.hf_key, tuple(path_prefix) + e.path, e.transform, e.layer)
                       for e in self.entries), {hf_prefix + k: v for k, v in self.unused.items()},
                      tuple(hf_prefix + p for p in self.ignored))

    def rebased(self, old: str, new: str) -> "KeyMap":
        """The same table with the leading `old` of every checkpoint name replaced by `new` (a part read
        from its own file: the vision tower's folder names `vision_model.*`, not `model.vision_tower...`)."""
        def re(k):
            if not k.startswith(old):
                raise ValueError(f"{k} does not start with {old}")
            return new + k[len(old):]
        return KeyMap((Entry(re(e.hf_key), e.path, e.transform, e.layer) for e in self.entries),
                      {re(k): v for k, v in self.unused.items()}, tuple(re(p) for p in self.ignored))

    def names(self) -> set:
        """Every checkpoint name this table reads (entries and unused tensors)."""
        return set(self.hf_keys()) | set(self.unused)


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


def _origin(state_dict, key: str, source: str) -> str:
    """The file a key was read from (hf_files.StateDict records it), else `source`."""
    return getattr(state_dict, "origin", {}).get(key, source)


def _release_shape(e: Entry, exp_flat) -> Tuple[int, ...]:
    """The shape the checkpoint should hold for `e` (PyTorch layout, one slice of a stacked param)."""
    if e.path not in exp_flat:
        return ()
    want = _shape(exp_flat[e.path])[len(e.layer or ()):]
    return tuple(TRANSFORMS[e.transform][1](np.empty(want, np.int8)).shape)


def _listed(items: Sequence[str]) -> str:
    return "; ".join(items[:8]) + (f"; (and {len(items) - 8} more)" if len(items) > 8 else "")


def to_params(state_dict: Mapping[str, np.ndarray], keymap: KeyMap, expected: Mapping,
              source: str = "checkpoint", allow_unexpected: Iterable[str] = (), dtype=None,
              unused_out: Optional[Dict[str, np.ndarray]] = None) -> dict:
    """Convert `state_dict` (HF name -> array) to our nested params.

    `expected` is our param tree of shapes (`jax.eval_shape(model.init, ...)['params']`, unboxed) and
    must be covered exactly: every leaf filled, every shape right. Keys of `state_dict` that the map
    does not name are errors unless they start with one of the map's `ignored` prefixes or of
    `allow_unexpected` (parts that another map will read). The map's `unused` tensors are checked for
    shape and put in `unused_out` when given. `dtype` casts every array (default: keep).
    Errors name the file (`state_dict.origin`, else `source`), the key and both shapes.
    """
    exp_flat = flatten(expected)
    present = set(state_dict)
    ties: Dict[Tuple[str, ...], List[Entry]] = {}
    for e in keymap.entries:
        if e.layer is None:
            ties.setdefault(e.path, []).append(e)
    missing = []
    for e in keymap.entries:
        group = ties.get(e.path, [e]) if e.layer is None else [e]
        if e.hf_key not in present and not any(t.hf_key in present for t in group):
            if e is group[0]:
                missing.append(f"{e.hf_key}: model expects {_release_shape(e, exp_flat)}, checkpoint has no such key")
    if missing:
        raise CheckpointError(f"{source}: missing key(s) {_listed(missing)}")
    named = keymap.names()
    allow = tuple(allow_unexpected) + keymap.ignored
    unexpected = sorted(k for k in state_dict if k not in named and not (allow and k.startswith(allow)))
    if unexpected:
        raise CheckpointError(f"{_origin(state_dict, unexpected[0], source)}: unexpected key(s) " + _listed(
            [f"{k}: checkpoint {tuple(np.shape(state_dict[k]))}, model has no such param" for k in unexpected]))
    for k, want in keymap.unused.items():
        if k in state_dict:
            got = tuple(np.shape(state_dict[k]))
            if got != tuple(want):
                raise CheckpointError(f"{_origin(state_dict, k, source)}: key {k}: checkpoint {got}, "
                                      f"expected {tuple(want)} (a tensor the model does not use, checked all the same)")
            if unused_out is not None:
                unused_out[k] = np.asarray(state_dict[k])

    stacks: Dict[Tuple[str, ...], Dict[Tuple[int, ...], Tuple[Entry, np.ndarray]]] = {}
    flat: Dict[Tuple[str, ...], np.ndarray] = {}
    for e in keymap.entries:
        if e.hf_key not in present:
            continue  # a tied copy another name provides
        if e.path not in exp_flat:
            raise CheckpointError(f"{_origin(state_dict, e.hf_key, source)}: key {e.hf_key} maps to "
                                  f"{'/'.join(e.path)}, which the model does not have")
        raw = np.asarray(state_dict[e.hf_key])
        arr = TRANSFORMS[e.transform][0](raw)
        if dtype is not None:
            arr = arr.astype(dtype)
        want = _shape(exp_flat[e.path])[len(e.layer or ()):]
        if arr.shape != want:
            at = "/".join(e.path) + ("" if e.layer is None else str(list(e.layer)))
            raise CheckpointError(f"{_origin(state_dict, e.hf_key, source)}: key {e.hf_key}: checkpoint "
                                  f"{tuple(raw.shape)}, model expects {_release_shape(e, exp_flat)} "
                                  f"(ours: {at} {want})")
        if e.layer is None:
            if e.path in flat and not np.array_equal(flat[e.path], arr):
                first = next(t.hf_key for t in ties[e.path] if t.hf_key in present)
                raise CheckpointError(f"{_origin(state_dict, e.hf_key, source)}: {e.hf_key} differs from "
                                      f"{first}; they are copies of one tensor ({'/'.join(e.path)}) and must be equal")
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


def to_state_dict(params: Mapping, keymap: KeyMap, unused: Optional[Mapping[str, np.ndarray]] = None
                  ) -> Dict[str, np.ndarray]:
    """The inverse of `to_params`: our params -> HF names and PyTorch layouts (for export); tied copies
    under every name, and the map's unused tensors taken from `unused` (those it lacks are left out:
    `missing_unused` lists them)."""
    flat = flatten(params)
    out = {}
    for e in keymap.entries:
        arr = np.asarray(flat[e.path])
        if e.layer is not None:
            arr = arr[tuple(e.layer)]
        out[e.hf_key] = TRANSFORMS[e.transform][1](arr)
    for k, shape in keymap.unused.items():
        if unused is not None and k in unused:
            if tuple(np.shape(unused[k])) != tuple(shape):
                raise CheckpointError(f"{k}: given {tuple(np.shape(unused[k]))}, the layout has {tuple(shape)}")
            out[k] = np.asarray(unused[k])
    return out


def missing_unused(keymap: KeyMap, unused: Optional[Mapping[str, np.ndarray]]) -> List[str]:
    return [k for k in keymap.unused if unused is None or k not in unused]
