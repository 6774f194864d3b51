"""Picking and loading a vision tower: CLIP or SigLIP by `VisionConfig.family`.

`load_vision_tower(folder)` reads an HF `CLIPVisionModel` / `SiglipVisionModel` folder (config.json +
weights) into `(VisionConfig, params)`. `tower_params` converts an already-read state dict, which is how
a video-only VideoLLaMA 2 checkpoint's own copy of the tower (`model.vision_tower.vision_tower.vision_model.*`)
is loaded: pass that prefix.
"""
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vllama_jax.checkpoints.hf_files import StateDict, read_state_dict
from vllama_jax.checkpoints.keymap import KeyMap, to_params
from vllama_jax.config import VisionConfig, load_config
from vllama_jax.models import clip, siglip

_FAMILIES = {"clip": (clip.CLIPVisionTower, clip), "siglip": (siglip.SiglipVisionTower, siglip)}


def vision_tower_class(family: str):
    return _FAMILIES[family][0]


def abstract_params(config: VisionConfig) -> Any:
    """The tower's param tree as shapes (jax.ShapeDtypeStruct), without allocating anything."""
    model = vision_tower_class(config.family)(config)
    pixels = jax.ShapeDtypeStruct((1, config.num_channels, config.image_size, config.image_size), jnp.float32)
    return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), pixels)["params"])


def tower_key_map(config: VisionConfig, prefix: str = "vision_model.") -> KeyMap:
    """The tower's checkpoint names under `prefix` -> our params (with SigLIP's unused pooling head)."""
    return _FAMILIES[config.family][1].hf_key_map(config, prefix)


def tower_params(config: VisionConfig, state_dict: Mapping[str, np.ndarray], prefix: str = "vision_model.",
                 source: str = "vision tower", dtype=None, unused_out: Optional[dict] = None) -> dict:
    """The tower's params from the entries of `state_dict` under `prefix` (others are left alone).
    A missing, mis-shaped or unknown key under `prefix` is a `CheckpointError` naming it; the tensors the
    model does not use (SigLIP's head) go to `unused_out` when given."""
    origin = getattr(state_dict, "origin", {})
    mine = StateDict({k: v for k, v in state_dict.items() if k.startswith(prefix)}, origin=origin)
    return to_params(mine, tower_key_map(config, prefix), abstract_params(config), source=source, dtype=dtype,
                     unused_out=unused_out)


def read_tower_folder(folder: str, prefix: Optional[str] = None):
    """(the tower's state dict, its prefix) from an HF CLIP / SigLIP folder. `prefix` None finds it:
    released folders (and full CLIP / SigLIP models) name the tower's tensors `vision_model.*`, while
    transformers 5's `save_pretrained` of a bare vision model writes them without a prefix."""
    want = "vision_model." if prefix is None else prefix
    state_dict = read_state_dict(folder, keep=lambda k: k.startswith(want))
    if prefix is None and not state_dict:
        want, state_dict = "", read_state_dict(folder)
    return state_dict, want


def load_vision_tower(folder: str, prefix: Optional[str] = None, select_layer: int = -2,
                      select_feature: str = "patch", dtype=None,
                      unused_out: Optional[dict] = None) -> Tuple[VisionConfig, dict]:
    """An HF CLIP / SigLIP vision folder -> (config, params), reading only the tower's tensors."""
    config = VisionConfig.from_hf_config(load_config(folder), select_layer, select_feature)
    state_dict, want = read_tower_folder(folder, prefix)
    return config, tower_params(config, state_dict, want, source=folder, dtype=dtype, unused_out=unused_out)
