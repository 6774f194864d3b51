"""`vllama_jax.load(path)`: checkpoint folders (HF layout, original key names) -> a ready model object.

What `path` may be, decided by its `config.json` `model_type` (or the file suffix):
    videollama2, videollama2_{mistral,mixtral,qwen2}  -> inference.VideoLLaMA2Model (chat, generate, forward)
    mistral, qwen2, mixtral                          -> Part (a decoder: logits of input_ids)
    clip_vision_model, siglip_vision_model (or clip / siglip with a vision_config) -> Part (a vision tower)
    a BEATs `.pt` file                               -> Part (BEATs: features of an fbank)
    a LoRA fine-tune folder (adapter_config.json)    -> merged in memory with its base: `load(path, base=DIR)`

Resolving a VideoLLaMA 2 folder's parts:
    vision tower  config (+ image processor) from the folder named by `mm_vision_tower` (absolute, relative to
                  the checkpoint folder, or a known hub id with a built-in config); weights from the checkpoint's
                  `model.vision_tower.vision_tower.*` keys when present (video-only releases), else from that folder.
    audio tower   config from the BEATs `.pt` named by `mm_audio_tower` when it can be found (else the released
                  BEATs iter3+ AS2M config); weights from the checkpoint's `model.audio_tower.*` keys, else
                  (a LoRA fine-tune, which leaves the frozen tower out) from that `.pt`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vllama_jax import config as C
from vllama_jax.checkpoints.hf_files import read_state_dict, read_torch_pickle, strip_prefix
from vllama_jax.checkpoints.keymap import CheckpointError, KeyMap, to_params

log = logging.getLogger(__name__)

VISION_PREFIX = "model.vision_tower.vision_tower."
AUDIO_PREFIX = "model.audio_tower."


@dataclasses.dataclass
class Part:
    """One loaded model part: its config, Flax module and params; `__call__` runs it jitted."""

    kind: str  # "decoder" | "vision" | "beats"
    config: Any
    module: nn.Module
    params: Any
    path: str

    def __call__(self, *args, **kwargs):
        return self.module.apply({"params": self.params}, *args, **kwargs)


def abstract_params(module: nn.Module, *args, **kwargs):
    """Param shapes (unboxed ShapeDtypeStructs) without allocating anything."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))
    return nn.unbox(shapes)["params"]


def boxed_abstract_params(module: nn.Module, *args, **kwargs):
    """As `abstract_params`, keeping the logical-axis boxes (for sharding)."""
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))["params"]


def _as_jax(tree, dtype):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=dtype), tree)


# --- the parts -------------------------------------------------------------------------------------------

def decoder_module(cfg: C.DecoderConfig, dtype=jnp.float32):
    from vllama_jax.models.decoder import Decoder
    return Decoder(cfg, dtype=dtype)


def decoder_params(cfg: C.DecoderConfig, state_dict, source: str, module=None, prefix: str = ""):
    from vllama_jax.models.decoder import hf_key_map
    module = module or decoder_module(cfg)
    expected = abstract_params(module, jnp.zeros((1, 2), jnp.int32))
    keymap = hf_key_map(cfg).with_prefix(prefix)
    return to_params(state_dict, keymap, expected, source=source,
                     allow_unexpected=("model.rotary_emb", "rotary_emb"))


def vision_module(cfg: C.VisionConfig, dtype=jnp.float32):
    from vllama_jax.models.vision_tower import vision_tower_class
    return vision_tower_class(cfg.family)(cfg, dtype=dtype)


def resolve_vision_tower(name: str, base_dir: str):
    """`mm_vision_tower` -> (VisionConfig, folder or None). Folder: absolute or relative to `base_dir`;
    else a known hub id (built-in config; its weights must then come from the checkpoint)."""
    for cand in (name, os.path.join(base_dir, name)):
        if os.path.isfile(os.path.join(cand, "config.json")):
            return C.VisionConfig.from_hf_config(C.read_json(os.path.join(cand, "config.json"))), cand
    if name in C.KNOWN_VISION_TOWERS:
        return C.KNOWN_VISION_TOWERS[name], None
    # A released config may name a local path of the authors' machine: try its last components as a hub id.
    tail = "/".join(name.rstrip("/").split("/")[-2:])
    if tail in C.KNOWN_VISION_TOWERS:
        return C.KNOWN_VISION_TOWERS[tail], None
    raise FileNotFoundError(
        f"mm_vision_tower '{name}': no folder with a config.json at that path or under {base_dir}, and not a known "
        f"hub id ({', '.join(C.KNOWN_VISION_TOWERS)}). Put the tower folder there or edit mm_vision_tower.")


def resolve_audio_tower(name: Optional[str], base_dir: str):
    """`mm_audio_tower` -> (BEATsConfig, path of the .pt or None)."""
    if not name:
        return C.BEATS_ITER3_PLUS_AS2M, None
    for cand in (name, os.path.join(base_dir, name), os.path.join(base_dir, os.path.basename(name))):
        if os.path.isfile(cand):
            try:
                ckpt = read_torch_pickle(cand)
                return C.BEATsConfig.from_hf_config(dict(ckpt["cfg"])), cand
            except CheckpointError as e:  # torch missing: the default config is the released one
                log.warning("%s; using the released BEATs iter3+ AS2M config", e)
                return C.BEATS_ITER3_PLUS_AS2M, cand
    log.warning("mm_audio_tower '%s' not found; using the released BEATs iter3+ AS2M config "
                "(the weights come from the checkpoint)", name)
    return C.BEATS_ITER3_PLUS_AS2M, None


# --- the whole model ---------------------------------------------------------------------------------------

def dummy_batch(cfg: C.VideoLLaMA2Config, batch: int = 1, text_len: int = 4, fbank_frames: int = 32):
    """The smallest batch of the right structure (for init / eval_shape)."""
    ids = np.zeros((batch, text_len), np.int32)
    ids[:, 1] = C.VIDEO_TOKEN_INDEX
    b = {"input_ids": ids, "attention_mask": np.ones((batch, text_len), bool)}
    if cfg.vision is not None:
        v = cfg.vision
        b["video"] = np.zeros((batch, cfg.num_frames, v.num_channels, v.image_size, v.image_size), np.float32)
        b["has_video"] = np.ones((batch,), bool)
    if cfg.audio is not None:
        # At least one BEATs patch long (a config with 64-frame patches cannot run on 32 frames).
        b["audio"] = np.zeros((batch, max(fbank_frames, cfg.audio.input_patch_size), 128), np.float32)
        b["has_audio"] = np.ones((batch,), bool)
    return b


def videollama2_params(cfg: C.VideoLLaMA2Config, state_dict, source: str, vision_folder: Optional[str] = None):
    """All params of a VideoLLaMA 2 model from its checkpoint state dict (+ the tower folder when needed)."""
    from vllama_jax.models.connectors import connector_key_map
    from vllama_jax.models.videollama2 import VideoLLaMA2

    expected = abstract_params(VideoLLaMA2(cfg), dummy_batch(cfg))
    params = {}

    # Decoder: everything that is not a multimodal part.
    mm = ("model.vision_tower.", "model.mm_projector", "model.audio_tower.")
    dec_sd = {k: v for k, v in state_dict.items() if not k.startswith(mm)}
    params["decoder"] = decoder_params(cfg.decoder, dec_sd, source)

    if cfg.vision is not None:
        from vllama_jax.models.vision_tower import load_vision_tower, tower_params
        if any(k.startswith(VISION_PREFIX) for k in state_dict):
            params["vision"] = tower_params(cfg.vision, state_dict, VISION_PREFIX + "vision_model.",
                                            source=f"{source} ({VISION_PREFIX}*)")
        elif vision_folder is not None:
            params["vision"] = load_vision_tower(vision_folder)[1]
        else:
            raise CheckpointError(
                f"{source}: no {VISION_PREFIX}* keys and no vision tower folder for mm_vision_tower "
                f"'{cfg.vision_tower_name}': put the tower's HF folder (config.json + weights) beside the checkpoint "
                "or set mm_vision_tower to its path")
        params["connector"] = to_params(strip_prefix(state_dict, "model.mm_projector."),
                                        connector_key_map(cfg.connector), expected["connector"],
                                        source=f"{source} (model.mm_projector.*)")
    if cfg.audio is not None:
        from vllama_jax.models.beats import beats_params_from_state_dict
        audio_sd = strip_prefix(state_dict, AUDIO_PREFIX)
        if audio_sd:
            params["audio"] = beats_params_from_state_dict(audio_sd, cfg.audio, f"{source} ({AUDIO_PREFIX}*)")
        else:  # a LoRA fine-tune keeps the frozen tower out of its files: the BEATs .pt it names
            params["audio"] = _audio_tower_from_pt(cfg, source)
        params["audio_projector"] = to_params(strip_prefix(state_dict, "model.mm_projector_a."),
                                              connector_key_map(cfg.audio_projector), expected["audio_projector"],
                                              source=f"{source} (model.mm_projector_a.*)")
    # Shapes of the composed tree against the model's own.
    for name, sub in expected.items():
        if name not in params:
            raise CheckpointError(f"{source}: nothing loaded for the model's '{name}' part")
        got = jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), params[name])
        want = jax.tree_util.tree_map(lambda x: tuple(x.shape), sub)
        if got != want:
            raise CheckpointError(f"{source}: the '{name}' part does not have the model's shapes")
    return params


def _audio_tower_from_pt(cfg: C.VideoLLaMA2Config, source: str) -> dict:
    """BEATs params from the `.pt` that `mm_audio_tower` names (beside the checkpoint folder `source`)."""
    from vllama_jax.models.beats import load_beats

    _, pt = resolve_audio_tower(cfg.audio_tower_name, source if os.path.isdir(source) else os.path.dirname(source))
    if pt is None:
        raise CheckpointError(f"{source}: the config names an audio tower but there are no {AUDIO_PREFIX}* keys, "
                              f"and its mm_audio_tower '{cfg.audio_tower_name}' is not a file there")
    config, params = load_beats(pt)
    if config != cfg.audio:
        raise CheckpointError(f"{pt}: its BEATs config differs from the checkpoint's audio_tower_config")
    return params


def videollama2_state_dict(path: str, base: Optional[str] = None):
    """(state dict under release names, folder of its tokenizer) of a VideoLLaMA 2 folder; a LoRA fine-tune
    folder (checkpoints/lora.py) is merged with its base model in memory."""
    from vllama_jax.checkpoints.lora import is_lora_folder, merge_lora_folder
    if is_lora_folder(path):
        merged = merge_lora_folder(path, base)
        return merged.state_dict, path if has_tokenizer(path) else merged.base
    if base is not None:
        raise ValueError(f"{path}: base={base} is for LoRA folders (with an adapter_config.json); this one has none")
    return read_state_dict(path), path


def has_tokenizer(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, f)) for f in ("tokenizer.json", "tokenizer.model",
                                                                  "tokenizer_config.json"))


def load_videollama2_config(path: str):
    """(VideoLLaMA2Config, vision folder or None, raw config dict) of a checkpoint folder."""
    raw = C.load_config(path)
    vision, vision_folder = (None, None)
    if raw.get("mm_vision_tower"):
        vision, vision_folder = resolve_vision_tower(raw["mm_vision_tower"], path)
    audio = None
    if raw.get("audio_tower_config"):  # written by checkpoints/export.py beside mm_audio_tower
        audio = C.BEATsConfig.from_hf_config(raw["audio_tower_config"])
    elif raw.get("mm_audio_tower"):
        audio, _ = resolve_audio_tower(raw["mm_audio_tower"], path)
    return C.VideoLLaMA2Config.from_hf_config(raw, vision=vision, audio=audio), vision_folder, raw


# --- dispatch ----------------------------------------------------------------------------------------------

def load(path: str, dtype=jnp.float32, **kwargs):
    """See the module docstring. `dtype`: the compute and param dtype (float32 for parity; bfloat16 on
    accelerators)."""
    if os.path.isfile(path) and path.endswith(".pt"):
        from vllama_jax.models.beats import BEATs, load_beats
        cfg, params = load_beats(path)
        return Part("beats", cfg, BEATs(cfg, dtype=dtype), _as_jax(params, dtype), path)
    raw = C.load_config(path)
    model_type = raw.get("model_type", "")
    if model_type in C.VIDEOLLAMA2_MODEL_TYPES:
        from vllama_jax.inference import VideoLLaMA2Model
        return VideoLLaMA2Model.from_pretrained(path, dtype=dtype, **kwargs)
    if model_type in C.DECODER_FAMILIES:
        cfg = C.DecoderConfig.from_hf_config(raw)
        module = decoder_module(cfg, dtype)
        params = decoder_params(cfg, read_state_dict(path), path, module)
        return Part("decoder", cfg, module, _as_jax(params, dtype), path)
    if model_type in ("clip_vision_model", "siglip_vision_model", "clip", "siglip"):
        from vllama_jax.models.vision_tower import load_vision_tower
        cfg, params = load_vision_tower(path)
        return Part("vision", cfg, vision_module(cfg, dtype), _as_jax(params, dtype), path)
    raise C.ConfigError(
        f"{path}: model_type '{model_type}' is not supported; expected one of "
        f"{', '.join(C.VIDEOLLAMA2_MODEL_TYPES + C.DECODER_FAMILIES)}, clip_vision_model, siglip_vision_model, "
        "or a BEATs .pt file")
