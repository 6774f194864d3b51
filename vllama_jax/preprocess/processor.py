"""`Processor`: files -> the arrays VideoLLaMA 2 reads, for one vision tower.

    p = Processor.from_pretrained("openai/clip-vit-large-patch14-336", num_frames=8)
    p.video("clip.mp4")                 # (8, 3, 336, 336) float32
    p.video("clip.mp4", start=1, end=4) # the frames between 1 s and 4 s
    p.image("photo.jpg")                # (1, 3, 336, 336)
    p.audio("clip.mp4")                 # (2998, 128) fbank of the video's sound track (or a sound file)
    p.frames_to_pixels(frames)          # in-memory (H, W, 3) uint8 frames -> (T, 3, 336, 336)

`aspect_ratio=None` is what the original's inference does (resize / crop the frame as it is); "pad"
first centres each frame on a square of the processor's mean colour, as its training data loader does.
Frame sampling and decoding are in video.py, the pixel operations in image.py.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

from vllama_jax.config import DEFAULT_NUM_FRAMES
from vllama_jax.preprocess import image as image_ops
from vllama_jax.preprocess import video as video_ops
from vllama_jax.preprocess.audio import audio_features
from vllama_jax.preprocess.image import KNOWN_PROCESSORS, ImageProcessorConfig

# The original pads only for "pad"; "square" (its training default) behaves as None.
ASPECT_RATIOS = (None, "square", "pad")


class Processor:
    """Pre-processing of one vision tower: frame sampling, optional padding to square, resize, normalise."""

    def __init__(self, config: ImageProcessorConfig, num_frames: Optional[int] = DEFAULT_NUM_FRAMES,
                 aspect_ratio: Optional[str] = None):
        """`num_frames=None` samples one frame a second, as the original does then (up to 32 frames)."""
        if aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"aspect_ratio must be one of {ASPECT_RATIOS}, got {aspect_ratio!r}")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        self.config = config
        self.num_frames = num_frames
        self.aspect_ratio = "pad" if aspect_ratio == "pad" else None

    @classmethod
    def from_pretrained(cls, name_or_path: str, num_frames: Optional[int] = DEFAULT_NUM_FRAMES,
                        aspect_ratio: Optional[str] = None) -> "Processor":
        """From a vision tower folder (its `preprocessor_config.json`), a VideoLLaMA 2 checkpoint folder
        (the tower its `config.json` names in `mm_vision_tower`), or a known hub id (built in)."""
        return cls(_find_config(os.fspath(name_or_path)), num_frames=num_frames, aspect_ratio=aspect_ratio)

    @property
    def image_size(self):
        """(H, W) of the processed frames."""
        return self.config.output_size

    def frames_to_pixels(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 RGB frames -> (T, 3, H', W') float32; padded with black frames to num_frames."""
        frames = [_as_rgb_array(f, i) for i, f in enumerate(frames)]
        if not frames:
            raise ValueError("frames_to_pixels got no frames")
        return self._pixels(video_ops.pad_clip(frames, self.num_frames))

    def video(self, path, start: Optional[float] = None, end: Optional[float] = None) -> np.ndarray:
        """A video file, GIF or folder of frames -> (num_frames, 3, H, W) float32 (see video.py).

        With num_frames=None: (T, 3, H, W), one frame per second of the clip, T <= 32."""
        frames = video_ops.read_clip(os.fspath(path), self.num_frames, start, end)
        return self._pixels(video_ops.pad_clip(frames, self.num_frames))

    def image(self, path) -> np.ndarray:
        """An image file (or a PIL image / (H, W, 3) uint8 array) -> (1, 3, H, W) float32."""
        if isinstance(path, (str, os.PathLike)):
            frame = image_ops.load_image(os.fspath(path))
        else:
            frame = _as_rgb_array(path, 0)
        return self._pixels([frame])

    def audio(self, path) -> np.ndarray:
        """A sound file, or a video's own sound track -> (2998, 128) Kaldi fbank (see audio.py)."""
        return audio_features(os.fspath(path))

    def _pixels(self, frames) -> np.ndarray:
        if self.aspect_ratio == "pad":
            frames = [image_ops.expand_to_square(f, self.config.fill_colour) for f in frames]
        return image_ops.preprocess(frames, self.config)

    def __repr__(self):
        return f"Processor(image_size={self.image_size}, num_frames={self.num_frames}, aspect_ratio={self.aspect_ratio!r})"


def _as_rgb_array(frame, i: int) -> np.ndarray:
    from PIL import Image

    if isinstance(frame, Image.Image):
        return image_ops.to_rgb(frame)
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame {i}: expected an (H, W, 3) uint8 RGB array, got {frame.shape} {frame.dtype}")
    return frame


def _find_config(name: str) -> ImageProcessorConfig:
    if os.path.isdir(name):
        config_file = os.path.join(name, "preprocessor_config.json")
        if os.path.isfile(config_file):
            return ImageProcessorConfig.from_json_file(config_file)
        model_config = os.path.join(name, "config.json")
        if os.path.isfile(model_config):
            with open(model_config) as f:
                tower = json.load(f).get("mm_vision_tower")
            if tower:
                # Released checkpoints name a hub id; local ones a folder relative to the checkpoint.
                local = os.path.join(name, tower)
                return _find_config(local if os.path.isdir(local) else tower)
        raise FileNotFoundError(f"{name}: no preprocessor_config.json (nor a config.json naming mm_vision_tower)")
    if name in KNOWN_PROCESSORS:
        return KNOWN_PROCESSORS[name]
    raise FileNotFoundError(f"'{name}' is not a folder and not a known vision tower "
                            f"({', '.join(KNOWN_PROCESSORS)}); nothing can be downloaded")
