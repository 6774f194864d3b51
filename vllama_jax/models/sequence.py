"""The sequence geometry of VideoLLaMA 2: how many decoder positions each modality takes.

    video / image   Nv = connector tokens of T frames of P patches (models/connectors.py; 845 for
                    stc_connector on 8 frames of CLIP-L/336's 24 x 24 patches); an image is T copies
    audio           Na = BEATs 16 x 16 patches over (F, 128) fbank frames: (F // 16) * 8 (1496 for 30 s)
    spliced length  L' = L - 1 + Nv + Na: the sample's one placeholder replaced by its features

`dummy_batch` is the smallest batch of the model's structure (for init / eval_shape); `train_batch_shapes`
the layout of a training batch (data_pipelines fills it, `plan` compiles for it). Everything here is host
arithmetic on the config: nothing compiled.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from vllama_jax import config as C
from vllama_jax.models.connectors import num_connector_tokens

# 30 s of sound at 16 kHz in Kaldi fbank frames of 25 ms every 10 ms: 1 + (480000 - 400) // 160. What the
# original feeds BEATs for every audio input (preprocess/audio.py pads or cuts to it).
FBANK_FRAMES = 2998
MEL_BINS = 128


def video_tokens(cfg: C.VideoLLaMA2Config, num_frames: Optional[int] = None) -> int:
    """Nv: connector tokens per video / image for `num_frames` frames (default: the config's)."""
    if cfg.vision is None:
        return 0
    return num_connector_tokens(cfg.connector, num_frames or cfg.num_frames, cfg.vision.num_feature_tokens)


def audio_tokens(cfg: C.VideoLLaMA2Config, fbank_frames: int = FBANK_FRAMES) -> int:
    """Na: BEATs tokens for an fbank of `fbank_frames` frames (16 x 16 patches over (frames, 128))."""
    if cfg.audio is None:
        return 0
    p = cfg.audio.input_patch_size
    return (fbank_frames // p) * (MEL_BINS // p)


def media_tokens(cfg: C.VideoLLaMA2Config, video: bool = True, fbank_frames: Optional[int] = None,
                 num_frames: Optional[int] = None) -> int:
    """Nv (when `video`) + Na (when `fbank_frames` is given): what one sample's placeholder becomes."""
    n = video_tokens(cfg, num_frames) if video else 0
    return n + (audio_tokens(cfg, fbank_frames) if fbank_frames is not None else 0)


def spliced_length(cfg: C.VideoLLaMA2Config, text_len: int, video: bool = True, fbank_frames: Optional[int] = None,
                   num_frames: Optional[int] = None) -> int:
    """L' = L - 1 + Nv + Na: the decoder's length for `text_len` tokens with one placeholder."""
    return text_len - 1 + media_tokens(cfg, video, fbank_frames, num_frames)


def default_buckets(model_max_length: int) -> Tuple[int, ...]:
    """Text lengths a training batch is padded to when the config names none: max/4, max/2, max."""
    return tuple(sorted({max(model_max_length // 4, 1), max(model_max_length // 2, 1), model_max_length}))


def batch_layout(batch: int, text_len: int, video: Optional[Tuple[int, int, int]] = None,
                 audio: bool = False) -> Dict[str, Tuple[tuple, Any]]:
    """{name: (shape, dtype)} of a training batch (what data_pipelines' `collate` fills and the train step
    takes): text (B, L) padded right, every sample's video slot (images repeated) when `video` =
    (num_frames, channels, image_size) is given, the fbank when `audio`, and `bad` rows (skipped by the loss)."""
    shapes = {"input_ids": ((batch, text_len), np.int32), "attention_mask": ((batch, text_len), np.bool_),
              "labels": ((batch, text_len), np.int32), "bad": ((batch,), np.bool_)}
    if video is not None:
        frames, channels, size = video
        shapes["video"] = ((batch, frames, channels, size, size), np.float32)
        shapes["has_video"] = ((batch,), np.bool_)
    if audio:
        shapes["audio"] = ((batch, FBANK_FRAMES, MEL_BINS), np.float32)
        shapes["has_audio"] = ((batch,), np.bool_)
    return shapes


def train_batch_shapes(cfg: C.VideoLLaMA2Config, batch: int, text_len: int) -> Dict[str, Tuple[tuple, Any]]:
    """`batch_layout` of model `cfg`: video when it has a vision tower, audio when it has an audio tower."""
    v = cfg.vision
    return batch_layout(batch, text_len, None if v is None else (cfg.num_frames, v.num_channels, v.image_size),
                        cfg.audio is not None)


def pad_text_to(batch: Dict[str, np.ndarray], length: int) -> Dict[str, np.ndarray]:
    """Pad the text arrays of a training batch to `length` (hosts agreeing on one bucket in multi-host runs)."""
    extra = length - batch["input_ids"].shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad a batch of length {batch['input_ids'].shape[1]} down to {length}")
    if extra == 0:
        return batch
    out = dict(batch)
    out["input_ids"] = np.pad(batch["input_ids"], ((0, 0), (0, extra)))
    out["attention_mask"] = np.pad(batch["attention_mask"], ((0, 0), (0, extra)))
    out["labels"] = np.pad(batch["labels"], ((0, 0), (0, extra)), constant_values=C.IGNORE_INDEX)
    return out


def dummy_batch(cfg: C.VideoLLaMA2Config, batch: int = 1, text_len: int = 4, fbank_frames: int = 32) -> dict:
    """The smallest batch of the model's structure (for init / eval_shape): see models/videollama2.py."""
    ids = np.zeros((batch, text_len), np.int32)
    ids[:, 1] = C.VIDEO_TOKEN_INDEX
    b = {"input_ids": ids, "attention_mask": np.ones((batch, text_len), bool)}
    if cfg.vision is not None:
        v = cfg.vision
        b["video"] = np.zeros((batch, cfg.num_frames, v.num_channels, v.image_size, v.image_size), np.float32)
        b["has_video"] = np.ones((batch,), bool)
    if cfg.audio is not None:
        # At least one BEATs patch long (a config with 64-frame patches cannot run on 32 frames).
        b["audio"] = np.zeros((batch, max(fbank_frames, cfg.audio.input_patch_size), MEL_BINS), np.float32)
        b["has_audio"] = np.ones((batch,), bool)
    return b
