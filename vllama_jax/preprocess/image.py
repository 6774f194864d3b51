"""Image pre-processing of the CLIP and SigLIP vision towers, in numpy + PIL.

    frames (list of (H, W, 3) uint8)  ->  preprocess(frames, config)  ->  (N, 3, H', W') float32

It reproduces transformers' PIL image processors (`CLIPImageProcessor`, `SiglipImageProcessor`, as the
original VideoLLaMA 2 ran them) operation by operation, so the numbers agree to the last bit:

    CLIP    resize the shortest edge to 336 (PIL bicubic; the long edge is int(336 * long / short)),
            center crop 336 x 336 (top-left corner at (size - crop) // 2), x * (1/255), (x - mean) / std
    SigLIP  resize to 384 x 384 (PIL bicubic), x * (1/255), (x - 0.5) / 0.5

The rescale runs in float64 and is cast to float32, and the normalisation then runs in float32, which
is the rounding transformers has. `expand_to_square` is the original's "pad" aspect ratio: the image
centred on a square canvas of the processor's mean colour (int(mean * 255) per channel).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the `resample` value of both released processors


class ImageError(ValueError):
    """An image file that cannot be read; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """The fields of a `preprocessor_config.json` that change the pixels.

    Exactly one of `shortest_edge` (CLIP: keep the aspect ratio, then crop) and `size` (SigLIP: resize
    to (height, width)) is set when `do_resize`.
    """

    image_mean: Tuple[float, float, float] = CLIP_MEAN
    image_std: Tuple[float, float, float] = CLIP_STD
    shortest_edge: Optional[int] = None
    size: Optional[Tuple[int, int]] = None
    crop_size: Optional[Tuple[int, int]] = None
    resample: int = BICUBIC
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_center_crop: bool = False
    do_rescale: bool = True
    do_normalize: bool = True

    @property
    def output_size(self) -> Tuple[int, int]:
        """(H, W) of the processed image (the crop when there is one)."""
        if self.do_center_crop and self.crop_size:
            return self.crop_size
        if self.size:
            return self.size
        return (self.shortest_edge, self.shortest_edge)

    @property
    def fill_colour(self) -> Tuple[int, int, int]:
        """The canvas colour of the "pad" aspect ratio; the original truncates mean * 255 to int."""
        return tuple(int(m * 255) for m in self.image_mean)

    @classmethod
    def from_dict(cls, d: dict, where: str = "preprocessor_config.json") -> "ImageProcessorConfig":
        """From a `preprocessor_config.json` dict, old (`"size": 336`) or new (`{"shortest_edge": 336}`) style."""
        kind = d.get("image_processor_type") or d.get("feature_extractor_type") or ""
        is_siglip = "siglip" in kind.lower()
        size, shortest_edge = d.get("size"), None
        if isinstance(size, dict):
            if "shortest_edge" in size:
                shortest_edge, size = size["shortest_edge"], None
            elif "height" in size and "width" in size:
                size = (size["height"], size["width"])
            else:
                raise ValueError(f"{where}: 'size' {size} has neither 'shortest_edge' nor 'height'/'width'")
        elif isinstance(size, int):
            # An int meant the shortest edge for CLIP-style processors and a square for SigLIP.
            size, shortest_edge = ((size, size), None) if is_siglip else (None, size)
        elif d.get("do_resize", True):
            raise ValueError(f"{where}: 'size' is missing")
        crop = d.get("crop_size")
        if isinstance(crop, int):
            crop = (crop, crop)
        elif isinstance(crop, dict):
            crop = (crop["height"], crop["width"])
        return cls(
            image_mean=tuple(d.get("image_mean", CLIP_MEAN)),
            image_std=tuple(d.get("image_std", CLIP_STD)),
            shortest_edge=shortest_edge,
            size=tuple(size) if size else None,
            crop_size=tuple(crop) if crop else None,
            resample=int(d.get("resample", BICUBIC)),
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
            do_resize=bool(d.get("do_resize", True)),
            do_center_crop=bool(d.get("do_center_crop", False)) and crop is not None,
            do_rescale=bool(d.get("do_rescale", True)),
            do_normalize=bool(d.get("do_normalize", True)),
        )

    @classmethod
    def from_json_file(cls, path: str) -> "ImageProcessorConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f), where=path)


# The processors of the released vision towers, built in because nothing can be downloaded.
KNOWN_PROCESSORS = {
    "openai/clip-vit-large-patch14-336": ImageProcessorConfig(
        shortest_edge=336, crop_size=(336, 336), do_center_crop=True),
    "google/siglip-so400m-patch14-384": ImageProcessorConfig(
        image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), size=(384, 384)),
}


def load_image(path: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (PIL's `convert("RGB")`, as the original's `process_image`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot read image '{path}': {e}") from e


def to_rgb(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 from any PIL mode; transparency is composited on white, as transformers'
    `convert_rgb` does for the images it is given."""
    if img.mode != "RGB":
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    return np.asarray(img)


def expand_to_square(frame: np.ndarray, colour: Sequence[int]) -> np.ndarray:
    """(H, W, 3) -> (S, S, 3), S = max(H, W): the frame centred on a canvas of `colour`.

    The offset of the short side is (S - short) // 2, the pixels copied unchanged (PIL's paste).
    """
    h, w = frame.shape[:2]
    if h == w:
        return frame
    side = max(h, w)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[...] = np.asarray(colour, np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top:top + h, left:left + w] = frame
    return canvas


def _resize(frame: np.ndarray, config: ImageProcessorConfig) -> np.ndarray:
    h, w = frame.shape[:2]
    if config.size is not None:
        new_h, new_w = config.size
    else:
        short, long = min(h, w), max(h, w)
        new_short, new_long = config.shortest_edge, int(config.shortest_edge * long / short)
        new_h, new_w = (new_long, new_short) if w <= h else (new_short, new_long)
    if (new_h, new_w) == (h, w):
        return frame
    return np.asarray(Image.fromarray(frame).resize((new_w, new_h), resample=config.resample))


def _center_crop(frame: np.ndarray, crop: Tuple[int, int]) -> np.ndarray:
    h, w = frame.shape[:2]
    ch, cw = crop
    if ch > h or cw > w:
        # An image smaller than the crop is zero-padded around its centre first (transformers does).
        ph, pw = max(ch, h), max(cw, w)
        top, left = math.ceil((ph - h) / 2), math.ceil((pw - w) / 2)
        padded = np.zeros((ph, pw, 3), frame.dtype)
        padded[top:top + h, left:left + w] = frame
        frame, h, w = padded, ph, pw
    top, left = (h - ch) // 2, (w - cw) // 2
    return frame[top:top + ch, left:left + cw]


def preprocess(frames: Sequence[np.ndarray], config: ImageProcessorConfig) -> np.ndarray:
    """(H, W, 3) uint8 RGB frames (sizes may differ) -> (N, 3, H', W') float32 pixel values."""
    out = []
    for frame in frames:
        x = frame
        if config.do_resize:
            x = _resize(x, config)
        if config.do_center_crop:
            x = _center_crop(x, config.crop_size)
        if config.do_rescale:
            x = (x.astype(np.float64) * config.rescale_factor).astype(np.float32)
        if config.do_normalize:
            x = x.astype(np.float32, copy=False)
            x = (x - np.asarray(config.image_mean, np.float32)) / np.asarray(config.image_std, np.float32)
        out.append(np.ascontiguousarray(np.asarray(x, np.float32).transpose(2, 0, 1)))
    return np.stack(out)
