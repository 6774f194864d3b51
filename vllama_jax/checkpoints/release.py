"""The release layout of a VideoLLaMA 2 checkpoint: one table, read by `load` and written by `save_videollama2`.

    part_key_maps(cfg) -> {part: KeyMap}      part = our params key: decoder, vision, connector, audio,
                                              audio_projector; the KeyMap: release name -> path in the part
    read_release(cfg, state_dict, expected, source, vision_folder, audio_pt) -> (params, unused)
    release_state_dicts(cfg, params, unused)  -> (checkpoint tensors, tower-folder tensors or None)

Reading and writing walk the same maps, so a loaded checkpoint exports to the names it came from and
back (tests/test_release.py holds every fixture's key set against ours).

Where the original puts each part (`model.safetensors` unless said):
    decoder          model.embed_tokens / model.layers.* / model.norm / lm_head (Mistral, Mixtral, Qwen2 names)
    vision           model.vision_tower.vision_tower.vision_model.*: the WHOLE HF vision model, SigLIP's
                     `post_layernorm` and pooling `head` too, on the `main` branch (video-only releases,
                     VideoLLaMA2.1-7B-16F included); the `audio_visual` branch leaves it in the
                     `mm_vision_tower` folder (`vision_model.*` there)
    connector        model.mm_projector.*
    audio            model.audio_tower.* (BEATs; its one relative-position table under every layer's name)
    audio_projector  model.mm_projector_a.*
A part that the checkpoint lacks is read from its own home: the tower folder, the BEATs `.pt` that
`mm_audio_tower` names (a LoRA fine-tune leaves the frozen towers out of its files).

Tensors the original writes that the model never reads (SigLIP's pooling head) are `unused`: read,
checked for shape and set aside on load (logged once), written back on export.
"""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from vllama_jax import config as C
from vllama_jax.checkpoints.hf_files import StateDict
from vllama_jax.checkpoints.keymap import CheckpointError, KeyMap, missing_unused, to_params, to_state_dict
from vllama_jax.models.beats import hf_key_map as beats_map
from vllama_jax.models.beats import read_beats_pt
from vllama_jax.models.connectors import connector_key_map
from vllama_jax.models.decoder import hf_key_map as decoder_map
from vllama_jax.models.vision_tower import read_tower_folder, tower_key_map

log = logging.getLogger(__name__)

VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
CONNECTOR_PREFIX = "model.mm_projector."
AUDIO_PREFIX = "model.audio_tower."
AUDIO_PROJECTOR_PREFIX = "model.mm_projector_a."
TOWER_FOLDER_PREFIX = "vision_model."  # the tower's own HF folder (released CLIP / SigLIP models)

# Which part owns a release name, by prefix; the decoder owns the rest.
_PART_PREFIXES = (("vision", "model.vision_tower."), ("connector", CONNECTOR_PREFIX), ("audio", AUDIO_PREFIX),
                  ("audio_projector", AUDIO_PROJECTOR_PREFIX))


def part_key_maps(cfg: C.VideoLLaMA2Config) -> Dict[str, KeyMap]:
    """The whole model's table, part by part, under the names a checkpoint of the `main` branch uses."""
    maps = {"decoder": decoder_map(cfg.decoder)}
    if cfg.vision is not None:
        maps["vision"] = tower_key_map(cfg.vision, VISION_PREFIX)
        maps["connector"] = connector_key_map(cfg.connector).with_prefix(CONNECTOR_PREFIX)
    if cfg.audio is not None:
        maps["audio"] = beats_map(cfg.audio, AUDIO_PREFIX)
        maps["audio_projector"] = connector_key_map(cfg.audio_projector).with_prefix(AUDIO_PROJECTOR_PREFIX)
    return maps


def tower_in_checkpoint(cfg: C.VideoLLaMA2Config) -> bool:
    """Whether the original writes the vision tower into model.safetensors: its `main` branch (video-only
    models) does, its `audio_visual` branch (the AV releases) keeps it in the tower folder."""
    return cfg.vision is not None and cfg.audio is None


def part_of(key: str) -> str:
    for part, prefix in _PART_PREFIXES:
        if key.startswith(prefix):
            return part
    return "decoder"


def split_by_part(state_dict: Mapping[str, np.ndarray]) -> Dict[str, StateDict]:
    origin = getattr(state_dict, "origin", {})
    parts: Dict[str, StateDict] = {}
    for k, v in state_dict.items():
        sd = parts.setdefault(part_of(k), StateDict())
        sd[k] = v
        if k in origin:
            sd.origin[k] = origin[k]
    return parts


# --- reading ------------------------------------------------------------------------------------------------

def _tower_from_folder(vision_folder: str, keymap: KeyMap) -> Tuple[StateDict, KeyMap]:
    state_dict, prefix = read_tower_folder(vision_folder)
    return state_dict, keymap.rebased(VISION_PREFIX, prefix)


def _beats_from_pt(cfg: C.VideoLLaMA2Config, audio_pt: str, keymap: KeyMap) -> Tuple[StateDict, KeyMap]:
    config, state_dict = read_beats_pt(audio_pt)
    if config != cfg.audio:
        raise CheckpointError(f"{audio_pt}: its BEATs config differs from the checkpoint's audio tower config")
    return state_dict, keymap.rebased(AUDIO_PREFIX, "")


def read_release(cfg: C.VideoLLaMA2Config, state_dict: Mapping[str, np.ndarray], expected: Mapping, source: str,
                 vision_folder: Optional[str] = None, audio_pt: Optional[str] = None
                 ) -> Tuple[dict, Dict[str, np.ndarray]]:
    """(params, unused tensors) of a whole model from its checkpoint tensors under release names.

    `expected`: the model's param tree of shapes (unboxed), one subtree per part. A missing, unexpected
    or mis-shaped key is a `CheckpointError` naming the file, the key and both shapes."""
    maps = part_key_maps(cfg)
    by_part = split_by_part(state_dict)
    stray = sorted(set(by_part) - set(maps))
    if stray:
        sd = by_part[stray[0]]
        k = sorted(sd)[0]
        raise CheckpointError(f"{sd.origin.get(k, source)}: unexpected key(s) {k}: checkpoint "
                              f"{tuple(np.shape(sd[k]))}, model has no such param (this config has no "
                              f"{stray[0]} part: {len(sd)} key(s) under its prefix)")
    params, unused = {}, {}
    for part, release_map in maps.items():
        keymap, sd, where = release_map, by_part.get(part), source
        if not sd and part == "vision":
            if vision_folder is None:
                raise CheckpointError(
                    f"{source}: no {VISION_PREFIX}* keys and no vision tower folder for mm_vision_tower "
                    f"'{cfg.vision_tower_name}': put the tower's HF folder (config.json + weights) beside the "
                    "checkpoint or set mm_vision_tower to its path")
            sd, keymap = _tower_from_folder(vision_folder, keymap)
            where = vision_folder
        elif not sd and part == "audio":
            if audio_pt is None:
                raise CheckpointError(
                    f"{source}: the config names an audio tower but there are no {AUDIO_PREFIX}* keys, and its "
                    f"mm_audio_tower '{cfg.audio_tower_name}' is not a file there")
            sd, keymap = _beats_from_pt(cfg, audio_pt, keymap)
            where = audio_pt
        part_unused: Dict[str, np.ndarray] = {}
        params[part] = to_params(sd if sd is not None else StateDict(), keymap, expected[part], source=where,
                                 unused_out=part_unused)
        if part_unused:
            # Kept under the checkpoint's names, whichever file they came from.
            back = {v: k for k, v in zip(release_map.unused, keymap.unused)}
            unused.update({back[k]: v for k, v in part_unused.items()})
    if unused:
        log.info("%s: %d tensor(s) the model does not use (%s...) were read, checked for shape and set aside "
                 "(export writes them back)", source, len(unused), sorted(unused)[0])
    return params, unused


# --- writing ------------------------------------------------------------------------------------------------

def release_state_dicts(cfg: C.VideoLLaMA2Config, params: Mapping, unused: Optional[Mapping[str, np.ndarray]] = None,
                        vision_folder: Optional[str] = None
                        ) -> Tuple[Dict[str, np.ndarray], Optional[Dict[str, np.ndarray]]]:
    """(model.safetensors tensors, tower-folder tensors or None) as the original writes this config.

    The unused tensors come from `unused` (what `read_release` set aside), else from `vision_folder`
    (the tower's own HF folder); without either they are left out, with a warning."""
    maps = part_key_maps(cfg)
    unused = dict(unused or {})
    if "vision" in maps and missing_unused(maps["vision"], unused) and vision_folder is not None:
        sd, keymap = _tower_from_folder(vision_folder, maps["vision"])
        unused.update({k: np.asarray(sd[v]) for k, v in zip(maps["vision"].unused, keymap.unused) if v in sd})
    checkpoint, tower = {}, None
    for part, keymap in maps.items():
        lacking = missing_unused(keymap, unused)
        if lacking:
            log.warning("%d tensor(s) that the original writes but the model never uses (%s...) are left out: "
                        "neither the loaded checkpoint nor a tower folder had them", len(lacking), lacking[0])
        tensors = to_state_dict(params[part], keymap, unused)
        if part == "vision" and not tower_in_checkpoint(cfg):
            tower = {TOWER_FOLDER_PREFIX + k[len(VISION_PREFIX):]: v for k, v in tensors.items()}
        else:
            checkpoint.update(tensors)
    return checkpoint, tower
