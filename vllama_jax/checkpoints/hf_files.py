"""Read the weights of an HF checkpoint folder into a flat `{name: np.ndarray}` state dict.

Formats, in the order they are looked for:
    model.safetensors                      one file
    model.safetensors.index.json           sharded safetensors (the index's `weight_map`)
    pytorch_model.bin / .bin.index.json    PyTorch pickles (needs torch; a test / conversion extra)
    *.pt                                   a torch pickle such as BEATs' `{"cfg", "model"}`

Arrays keep their stored dtype (bfloat16 comes back as `ml_dtypes.bfloat16`). `keep` filters names
before anything is read, so loading one part of a 72B checkpoint touches only that part's bytes. The
returned `StateDict` remembers which file each key came from (`.origin`), so errors can name it.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, Optional

import numpy as np

from vllama_jax.checkpoints.keymap import CheckpointError

class StateDict(dict):
    """{name: np.ndarray}, plus `origin`: {name: the file it was read from}."""

    def __init__(self, *args, origin: Optional[Dict[str, str]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.origin: Dict[str, str] = dict(origin or {})

    @classmethod
    def from_file(cls, path: str, tensors: Dict[str, np.ndarray]) -> "StateDict":
        return cls(tensors, origin={k: path for k in tensors})

    def update_from(self, other: "StateDict"):
        self.update(other)
        self.origin.update(getattr(other, "origin", {}))


def _read_safetensors(path: str, keep: Optional[Callable[[str], bool]]) -> StateDict:
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(path, framework="numpy") as f:
            for k in f.keys():
                if keep is None or keep(k):
                    out[k] = f.get_tensor(k)
    except Exception as e:  # a truncated or corrupt file
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from e
    return StateDict.from_file(path, out)


def _torch_load(path: str):
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{path}: reading a PyTorch pickle needs torch (`pip install torch==2.14.1`), "
                              "or convert the checkpoint to safetensors") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read PyTorch checkpoint ({e})") from e


def torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.detach().float().numpy().astype(ml_dtypes.bfloat16)
    return t.detach().cpu().numpy()


def _read_torch(path: str, keep: Optional[Callable[[str], bool]]) -> StateDict:
    sd = _torch_load(path)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return StateDict.from_file(path, {k: torch_to_numpy(v) for k, v in sd.items() if keep is None or keep(k)})


def read_torch_pickle(path: str):
    """A raw torch pickle (e.g. BEATs' `{"cfg": dict, "model": state_dict}`), tensors as torch tensors."""
    return _torch_load(path)


def _read_index(folder: str, index_name: str, reader, keep) -> StateDict:
    index_path = os.path.join(folder, index_name)
    with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    shards = sorted({v for k, v in weight_map.items() if keep is None or keep(k)})
    out = StateDict()
    for shard in shards:
        shard_path = os.path.join(folder, shard)
        if not os.path.exists(shard_path):
            raise CheckpointError(f"{index_path}: shard {shard} is listed but missing from {folder}")
        out.update_from(reader(shard_path, keep))
    return out


def read_state_dict(path: str, keep: Optional[Callable[[str], bool]] = None) -> StateDict:
    """All tensors of a checkpoint folder (or of one weights file), optionally filtered by name."""
    if os.path.isfile(path):
        if path.endswith(".safetensors"):
            return _read_safetensors(path, keep)
        return _read_torch(path, keep)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint folder or file")
    candidates = [
        ("model.safetensors", lambda: _read_safetensors(os.path.join(path, "model.safetensors"), keep)),
        ("model.safetensors.index.json", lambda: _read_index(path, "model.safetensors.index.json",
                                                             _read_safetensors, keep)),
        ("pytorch_model.bin", lambda: _read_torch(os.path.join(path, "pytorch_model.bin"), keep)),
        ("pytorch_model.bin.index.json", lambda: _read_index(path, "pytorch_model.bin.index.json", _read_torch, keep)),
    ]
    for name, read in candidates:
        if os.path.exists(os.path.join(path, name)):
            return read()
    raise CheckpointError(f"{path}: no weights found (looked for " + ", ".join(n for n, _ in candidates) + ")")


def strip_prefix(state_dict: Dict[str, np.ndarray], prefix: str) -> StateDict:
    """The entries under `prefix`, with it removed (their origins kept)."""
    origin = getattr(state_dict, "origin", {})
    n = len(prefix)
    return StateDict({k[n:]: v for k, v in state_dict.items() if k.startswith(prefix)},
                     origin={k[n:]: f for k, f in origin.items() if k.startswith(prefix)})
