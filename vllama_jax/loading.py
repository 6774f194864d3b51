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
Weights go through the release table of checkpoints/release.py, the one export writes.

Imports run one way: loading -> inference (`VideoLLaMA2Model` takes a loaded config, params, tokenizer
and processor, and knows nothing of files).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vllama_jax import config as C
from vllama_jax.checkpoints.hf_files import read_state_dict, read_torch_pickle
from vllama_jax.checkpoints.keymap import CheckpointError, to_params
from vllama_jax.checkpoints.lora import is_lora_folder, merge_lora_folder
from vllama_jax.checkpoints.release import AUDIO_PREFIX, read_release
from vllama_jax.inference import VideoLLaMA2Model, enable_compilation_cache
from vllama_jax.models.beats import BEATs, load_beats
from vllama_jax.models.decoder import DECODE_LAYOUTS, Decoder, fuse_projections, hf_key_map, pack_kernels, split_layers
from vllama_jax.models.decoder import decode_layout as default_decode_layout
from vllama_jax.models.sequence import dummy_batch, video_tokens
from vllama_jax.models.videollama2 import VideoLLaMA2
from vllama_jax.models.vision_tower import load_vision_tower, vision_tower_class
from vllama_jax.preprocess.processor import Processor
from vllama_jax.quantize import quantize_params

log = logging.getLogger(__name__)


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
    return Decoder(cfg, dtype=dtype)


def decoder_params(cfg: C.DecoderConfig, state_dict, source: str, module=None, prefix: str = ""):
    module = module or decoder_module(cfg)
    expected = abstract_params(module, jnp.zeros((1, 2), jnp.int32))
    keymap = hf_key_map(cfg).with_prefix(prefix)
    return to_params(state_dict, keymap, expected, source=source,
                     allow_unexpected=("model.rotary_emb", "rotary_emb"))


def vision_module(cfg: C.VisionConfig, dtype=jnp.float32):
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


def find_audio_tower_file(name: Optional[str], base_dir: str) -> Optional[str]:
    """The BEATs `.pt` that `mm_audio_tower` names: absolute, relative to `base_dir`, or its file name there."""
    if not name:
        return None
    for cand in (name, os.path.join(base_dir, name), os.path.join(base_dir, os.path.basename(name))):
        if os.path.isfile(cand):
            return cand
    return None


def resolve_audio_tower(name: Optional[str], base_dir: str):
    """`mm_audio_tower` -> (BEATsConfig, path of the .pt or None)."""
    if not name:
        return C.BEATS_ITER3_PLUS_AS2M, None
    cand = find_audio_tower_file(name, base_dir)
    if cand is not None:
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

def videollama2_state_dict(path: str, base: Optional[str] = None):
    """(state dict under release names, folder of its tokenizer) of a VideoLLaMA 2 folder; a LoRA fine-tune
    folder (checkpoints/lora.py) is merged with its base model in memory."""
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


@dataclasses.dataclass
class Checkpoint:
    """A VideoLLaMA 2 checkpoint read into host memory: what `VideoLLaMA2Model` and `convert` take."""

    config: C.VideoLLaMA2Config
    params: dict  # numpy arrays, in the checkpoint's dtype
    unused: Dict[str, np.ndarray]  # tensors the model never reads (SigLIP's head), for export
    tokenizer_folder: str
    vision_folder: Optional[str]
    path: str


def read_videollama2(path: str, base: Optional[str] = None) -> Checkpoint:
    """A VideoLLaMA 2 folder (or a LoRA fine-tune folder with its `base`) -> `Checkpoint`, through the
    release table of checkpoints/release.py (the one `save_videollama2` writes)."""
    cfg, vision_folder, _ = load_videollama2_config(path)
    state_dict, tokenizer_folder = videollama2_state_dict(path, base)
    audio_pt = None
    if cfg.audio is not None and not any(k.startswith(AUDIO_PREFIX) for k in state_dict):
        audio_pt = find_audio_tower_file(cfg.audio_tower_name, path)
    expected = abstract_params(VideoLLaMA2(cfg), dummy_batch(cfg))
    params, unused = read_release(cfg, state_dict, expected, path, vision_folder, audio_pt)
    return Checkpoint(cfg, params, unused, tokenizer_folder, vision_folder, path)


def load_videollama2(path: str, dtype=jnp.float32, num_frames: Optional[int] = None,
                     aspect_ratio: Optional[str] = None, compilation_cache: bool = True,
                     max_context: Optional[int] = None, base: Optional[str] = None, quantize: Optional[str] = None,
                     decode_layout: Optional[str] = None):
    """A VideoLLaMA 2 folder -> `inference.VideoLLaMA2Model` (params on the device in `dtype`, tokenizer and
    processor when the folder has them). `num_frames` other than the checkpoint's changes the connector's
    token count (a warning says so); `base`: the base model of a LoRA folder; `quantize="int8"`: int8
    weight-only decoder (quantize.py); `decode_layout`: see models/decoder.py (default: this backend's)."""
    if compilation_cache:
        enable_compilation_cache()
    ckpt = read_videollama2(path, base)
    cfg = ckpt.config
    if num_frames is not None and num_frames != cfg.num_frames:
        log.warning("num_frames %d differs from the %d the checkpoint was trained with: the connector gives "
                    "%d tokens per video instead of %d", num_frames, cfg.num_frames,
                    video_tokens(cfg, num_frames), video_tokens(cfg))
        cfg = dataclasses.replace(cfg, num_frames=num_frames)
    tokenizer = load_tokenizer(ckpt.tokenizer_folder) if has_tokenizer(ckpt.tokenizer_folder) else None
    processor = None
    if cfg.vision is not None:
        try:
            processor = Processor.from_pretrained(ckpt.vision_folder or cfg.vision_tower_name,
                                                  num_frames=cfg.num_frames, aspect_ratio=aspect_ratio)
        except Exception as e:  # the model still runs on pre-processed inputs
            log.warning("no image processor for %s (%s)", ckpt.vision_folder or cfg.vision_tower_name, e)
    layout = _decode_layout(decode_layout, dtype)
    params = dict(ckpt.params)
    if layout in ("split", "packed"):
        params["decoder"] = _split_and_fuse(params["decoder"], dtype, pack=layout == "packed")
    params = _as_jax(params, dtype)
    if quantize is not None:
        params = quantize_params(params, quantize)
    return VideoLLaMA2Model(cfg, params, tokenizer, processor, dtype=dtype, path=path, max_context=max_context,
                            unused=ckpt.unused, vision_folder=ckpt.vision_folder, decode_layout=layout)


def _split_and_fuse(decoder, dtype, pack: bool = False):
    """A checkpoint's decoder params (numpy) in the "split" decode layout: the layers split into numpy views,
    each layer's projections fused on the host and moved to the device at once (one layer's copy at a
    time on either side). `pack`: the "packed" layout, each layer's kernels packed on the host too."""
    if not pack:
        return fuse_projections(split_layers(decoder), place=lambda layer: _as_jax(layer, dtype))
    return pack_kernels(fuse_projections(split_layers(decoder)), place=lambda layer: _as_jax(layer, dtype))


def _decode_layout(layout: Optional[str], dtype) -> str:
    if layout is None:
        return default_decode_layout(dtype)
    if layout not in DECODE_LAYOUTS:
        raise ValueError(f"decode_layout='{layout}': expected one of {', '.join(DECODE_LAYOUTS)}")
    return layout


def load_tokenizer(folder: str):
    """The tokenizer of a checkpoint folder (transformers' AutoTokenizer; no model weights are read)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # transformers warns that config.json's videollama2_* model_type is unknown to it: expected here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(folder)
    finally:
        hf_logging.set_verbosity(verbosity)


# --- dispatch ----------------------------------------------------------------------------------------------

def load(path: str, dtype=jnp.float32, quantize: Optional[str] = None, decode_layout: Optional[str] = None,
         **kwargs):
    """See the module docstring. `dtype`: the compute and param dtype (float32 for parity; bfloat16 on
    accelerators). `quantize="int8"`: int8 weight-only decoder kernels (quantize.py). `decode_layout`: how a
    decoder's layers are held for generation (models/decoder.py `decode_layout`; default: this backend's)."""
    if os.path.isfile(path) and path.endswith(".pt"):
        cfg, params = load_beats(path)
        return Part("beats", cfg, BEATs(cfg, dtype=dtype), _as_jax(params, dtype), path)
    raw = C.load_config(path)
    model_type = raw.get("model_type", "")
    if model_type in C.VIDEOLLAMA2_MODEL_TYPES:
        return load_videollama2(path, dtype=dtype, quantize=quantize, decode_layout=decode_layout, **kwargs)
    if model_type in C.DECODER_FAMILIES:
        cfg = C.DecoderConfig.from_hf_config(raw)
        module = decoder_module(cfg, dtype)
        params = decoder_params(cfg, read_state_dict(path), path, module)
        layout = _decode_layout(decode_layout, dtype)
        if layout in ("split", "packed"):
            params = _split_and_fuse(params, dtype, pack=layout == "packed")
        params = _as_jax(params, dtype)
        if quantize is not None:
            params = quantize_params(params, quantize, part="decoder")
        return Part("decoder", cfg, module, params, path)
    if model_type in ("clip_vision_model", "siglip_vision_model", "clip", "siglip"):
        cfg, params = load_vision_tower(path)
        return Part("vision", cfg, vision_module(cfg, dtype), _as_jax(params, dtype), path)
    raise C.ConfigError(
        f"{path}: model_type '{model_type}' is not supported; expected one of "
        f"{', '.join(C.VIDEOLLAMA2_MODEL_TYPES + C.DECODER_FAMILIES)}, clip_vision_model, siglip_vision_model, "
        "or a BEATs .pt file")
