"""Write a VideoLLaMA 2 checkpoint folder in the release layout (original key names), atomically.

    save_videollama2(folder, config, params, tokenizer=None, dtype=np.float32, unused=None, vision_folder=None)

writes `config.json` (the original's fields), `model.safetensors` with the keys the original writes for
this config (checkpoints/release.py, the table `load` reads: decoder, connector, the whole vision tower
on the `main` branch's video-only layout, BEATs and the audio projector on the audio-visual one), a
`vision_tower/` folder that `mm_vision_tower` names (tower config + image processor config, and for the
audio-visual layout the tower's weights, as the original reads them from there), and the tokenizer
files. `unused`: tensors the model never reads but the original writes (SigLIP's pooling head), as
`vllama_jax.load` set them aside (`model.unused`); else they are read from `vision_folder`.

Everything is written into a temporary folder beside `folder` and renamed into place, so a crash never
leaves a half-written checkpoint. `vllama_jax.load(folder)` reads it back; so does the original code.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Mapping, Optional

import numpy as np

from vllama_jax import config as C
from vllama_jax.checkpoints.release import release_state_dicts

TOWER_FOLDER = "vision_tower"

CLIP_PROCESSOR = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "do_center_crop": True,
                  "do_rescale": True, "do_normalize": True, "do_convert_rgb": True, "resample": 3,
                  "rescale_factor": 1 / 255, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                  "image_std": [0.26862954, 0.26130258, 0.27577711]}
SIGLIP_PROCESSOR = {"image_processor_type": "SiglipImageProcessor", "do_resize": True, "do_rescale": True,
                    "do_normalize": True, "resample": 3, "rescale_factor": 1 / 255, "image_mean": [0.5, 0.5, 0.5],
                    "image_std": [0.5, 0.5, 0.5]}


def processor_config(vision: C.VisionConfig) -> dict:
    if vision.family == "clip":
        return {**CLIP_PROCESSOR, "size": {"shortest_edge": vision.image_size},
                "crop_size": {"height": vision.image_size, "width": vision.image_size}}
    return {**SIGLIP_PROCESSOR, "size": {"height": vision.image_size, "width": vision.image_size}}


def save_videollama2(folder: str, cfg: C.VideoLLaMA2Config, params, tokenizer=None, dtype=np.float32,
                     unused: Optional[Mapping[str, np.ndarray]] = None, vision_folder: Optional[str] = None) -> str:
    """`dtype`: of the weights written (float32, or bfloat16 / ml_dtypes.bfloat16 for half the size)."""
    import ml_dtypes  # noqa: F401  (gives numpy the "bfloat16" dtype name)
    from safetensors.numpy import save_file

    dtype = np.dtype(dtype)
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(folder) + "-", dir=parent)
    try:
        raw = cfg.to_hf_config()
        raw["architectures"] = [{"mistral": "Videollama2MistralForCausalLM", "mixtral": "Videollama2MixtralForCausalLM",
                                 "qwen2": "Videollama2Qwen2ForCausalLM"}[cfg.decoder.family]]
        if cfg.vision is not None:
            raw["mm_vision_tower"] = TOWER_FOLDER
            os.makedirs(os.path.join(tmp, TOWER_FOLDER))
            with open(os.path.join(tmp, TOWER_FOLDER, "config.json"), "w") as f:
                json.dump(cfg.vision.to_hf_config(), f, indent=2)
            with open(os.path.join(tmp, TOWER_FOLDER, "preprocessor_config.json"), "w") as f:
                json.dump(processor_config(cfg.vision), f, indent=2)
        if cfg.audio is not None:
            # The BEATs config normally comes from the .pt that mm_audio_tower names; carry it inline too.
            raw["mm_audio_tower"] = cfg.audio_tower_name or "BEATs.pt"
            raw["audio_tower_config"] = cfg.audio.to_hf_config()
        raw["torch_dtype"] = dtype.name
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(raw, f, indent=2)
        state, tower = release_state_dicts(cfg, params, unused, vision_folder)
        save_file({k: np.ascontiguousarray(np.asarray(v).astype(dtype)) for k, v in state.items()},
                  os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        if tower is not None:
            save_file({k: np.ascontiguousarray(np.asarray(v).astype(dtype)) for k, v in tower.items()},
                      os.path.join(tmp, TOWER_FOLDER, "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if os.path.exists(folder):
            old = folder + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
