"""One annotation row -> one training sample, and samples -> a fixed-shape batch.

`SampleDecoder(spec[, media_cache])(row)` decodes the media with the inference pre-processing
(`vllama_jax.preprocess.Processor`: the same frame sampling, resize and normalisation), applies the
conversation template and tokenizes with the placeholder ids (`tokenize_conversation`: labels are
-100 outside the assistant turns, the text cut to `model_max_length`). A sample:

    input_ids (n,) int32   with at most one placeholder (-200 image, -201 video, -202 audio)
    labels    (n,) int32   -100 where no loss is taken
    video     (T, 3, H, W) float32 or None   (an image is repeated T times)
    audio     (2998, 128)  float32 or None   Kaldi fbank (an audio row, or a video's own track)

A `media_cache` (vllama_jax/preprocess/media_cache.py) keeps the decoded frames and sound by file and
pre-processing, so rows of several annotation files about the same clips decode each clip once (the
demo's phase caches: its video, audio and audio-visual rows are about the same 1200 clips).

A bad row (malformed JSON, missing or undecodable file, a tag without media, no assistant turn)
never stops training: it is logged with its file and line and becomes an *empty* sample (no tokens
count, `bad=True`). Keeping its slot, rather than dropping it, keeps every batch full and makes the
samples of step k a function of k alone, so resuming and changing the number of hosts or workers
cannot shift the data; the `bad` flags travel in the batch to the metrics.

`collate(samples, ...)` pads the text to the smallest length bucket that fits the longest sample and
stacks everything into arrays of static shapes (zeros and `has_video=False` where a sample has no
video; likewise audio), so a batch may mix video, image, audio and text-only samples.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Dict, List, Optional, Sequence

import numpy as np

from vllama_jax.config import IGNORE_INDEX, MODAL_TOKEN_INDEX
from vllama_jax.models.sequence import FBANK_FRAMES, MEL_BINS, batch_layout

log = logging.getLogger(__name__)

AUDIO_SHAPE = (FBANK_FRAMES, MEL_BINS)  # 30 s of 10 ms fbank frames: what BEATs receives
MEDIA_KEYS = {"video": "<video>", "image": "<image>", "audio": "<audio>"}
_LOAD_LOCK = threading.Lock()  # grain decodes in several threads; load the tokenizer once


class BadSample(Exception):
    """A row that cannot become a sample; the message says why."""


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """Everything a decoder needs, as plain values so it pickles into grain worker processes."""

    data_folder: str
    tokenizer: str  # a tokenizer folder (AutoTokenizer)
    processor: str  # a vision tower folder or hub id (Processor.from_pretrained)
    family: str  # the decoder family: picks the chat template
    num_frames: int
    image_size: int
    has_audio_tower: bool
    model_max_length: int
    template: str = "chat"  # "plain": the pretraining format, the media tag alone + the answer
    aspect_ratio: str = "pad"


class SampleDecoder:
    """`row -> sample dict`; the tokenizer and the processor are loaded on first use in each process."""

    def __init__(self, spec: SampleSpec, media_cache=None):
        self.spec = spec
        self.media_cache = media_cache  # a MediaCache, shared by the threads of this process
        self._tokenizer = None
        self._processor = None

    def __getstate__(self):  # ship the spec to workers, not the loaded tokenizer (nor this process's cache)
        return {"spec": self.spec, "media_cache": None, "_tokenizer": None, "_processor": None}

    def _load(self):
        """Tokenizer and processor, on first use in this process. Their errors (a wrong path) are the
        config's, not a sample's: they propagate."""
        with _LOAD_LOCK:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                from vllama_jax.preprocess.processor import Processor
                self._processor = Processor.from_pretrained(self.spec.processor, num_frames=self.spec.num_frames,
                                                            aspect_ratio=self.spec.aspect_ratio)
                self._tokenizer = AutoTokenizer.from_pretrained(self.spec.tokenizer)

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    @property
    def processor(self):
        self._load()
        return self._processor

    def __call__(self, row: dict) -> dict:
        self._load()
        try:
            return self.decode(row)
        except Exception as e:  # noqa: BLE001 -- one bad sample must never stop a run
            reason = str(e) if isinstance(e, BadSample) else f"{type(e).__name__}: {e}"
            log.warning("skipping %s: %s", row.get("_source", "?"), reason)
            return empty_sample()

    def decode(self, row: dict) -> dict:
        if "_error" in row:
            raise BadSample(row["_error"])
        conversations = row.get("conversations")
        if not isinstance(conversations, list) or not all(isinstance(t, dict) for t in conversations):
            raise BadSample("no 'conversations' list")
        if not any(t.get("from") == "gpt" for t in conversations):
            raise BadSample("no assistant turn")
        kinds = [k for k in MEDIA_KEYS if row.get(k)]
        if len(kinds) > 1:
            raise BadSample(f"more than one media file ({', '.join(kinds)})")
        kind = kinds[0] if kinds else None
        self._check_tags(conversations, MEDIA_KEYS.get(kind))
        video = audio = None
        if kind is not None:
            path = os.path.join(self.spec.data_folder, row[kind])
            if not os.path.exists(path):
                raise BadSample(f"missing file {path}")
            video, audio = self._media(kind, path, row)
        from vllama_jax.preprocess.conversation import tokenize_conversation
        input_ids, labels = tokenize_conversation(conversations, self.tokenizer, self.spec.family,
                                                  self.spec.model_max_length, pretraining=self.spec.template == "plain")
        input_ids = np.asarray(input_ids, np.int32)
        labels = np.asarray(labels, np.int32)
        if not (labels != IGNORE_INDEX).any():
            raise BadSample(f"no assistant tokens within model_max_length {self.spec.model_max_length}")
        return {"input_ids": input_ids, "labels": labels, "video": video, "audio": audio, "bad": False}

    def _cached(self, path: str, how: tuple, load):
        """load() as float32, through the media cache (if any) under the file's identity and `how`."""
        if self.media_cache is None:
            return np.asarray(load(), np.float32)
        from vllama_jax.preprocess.media_cache import file_identity

        key = how + (self.spec.processor, self.spec.num_frames, self.spec.aspect_ratio) + file_identity(path)
        return self.media_cache.get_or_load(key, lambda: np.asarray(load(), np.float32))

    def _media(self, kind: str, path: str, row: dict):
        spec = self.spec
        try:
            if kind == "video":
                start, end = row.get("start"), row.get("end")
                video = self._cached(path, ("video", start, end), lambda: self.processor.video(path, start, end))
                audio = None
                if row.get("_audio_from_video") and spec.has_audio_tower:
                    audio = self._cached(path, ("audio",), lambda: self.processor.audio(path))
                return video, audio
            if kind == "image":
                image = np.asarray(self.processor.image(path), np.float32)  # (1, 3, H, W)
                return np.repeat(image, spec.num_frames, axis=0), None
            if not spec.has_audio_tower:
                raise BadSample("an audio sample, but the model has no audio tower")
            return None, self._cached(path, ("audio",), lambda: self.processor.audio(path))
        except BadSample:
            raise
        except Exception as e:  # noqa: BLE001
            raise BadSample(f"cannot decode {path}: {type(e).__name__}: {e}") from None

    @staticmethod
    def _check_tags(conversations: List[dict], tag: Optional[str]) -> None:
        """The media file and the tags must agree: one tag of its kind, or none without media."""
        found = [m for t in conversations for m in MODAL_TOKEN_INDEX for _ in range(str(t.get("value", "")).count(m))]
        if tag is None and found:
            raise BadSample(f"a {found[0]} tag but no media file")
        if tag is not None and found != [tag]:
            raise BadSample(f"expected exactly one {tag} tag in the conversation, found {found or 'none'}")


def empty_sample() -> dict:
    """The slot of a bad row: no tokens, no media, `bad=True`."""
    return {"input_ids": np.zeros((0,), np.int32), "labels": np.zeros((0,), np.int32), "video": None,
            "audio": None, "bad": True}


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (text is truncated to the largest, so one always fits)."""
    for b in sorted(buckets):
        if n <= b:
            return b
    raise ValueError(f"a sample of {n} tokens is longer than the largest length bucket {max(buckets)}")


def collate(samples: Sequence[dict], buckets: Sequence[int], num_frames: int, image_size: int,
            has_audio_tower: bool) -> Dict[str, np.ndarray]:
    """Stack samples into the model's fixed-shape batch (see `vllama_jax/models/videollama2.py`)."""
    b = len(samples)
    length = bucket_length(max(len(s["input_ids"]) for s in samples), buckets)
    # The one layout, which `plan` compiles for too.
    layout = batch_layout(b, length, (num_frames, 3, image_size), has_audio_tower)
    batch = {name: np.zeros(shape, dtype) for name, (shape, dtype) in layout.items()}
    batch["labels"][:] = IGNORE_INDEX
    batch["bad"][:] = [s["bad"] for s in samples]
    video_shape = batch["video"].shape[1:]
    for i, s in enumerate(samples):
        if s["video"] is not None and s["video"].shape != video_shape:
            raise ValueError(f"a sample's video is {s['video'].shape}, the model takes {video_shape}: "
                             "the pre-processing (data.processor) does not fit the model's vision tower")
        n = len(s["input_ids"])
        batch["input_ids"][i, :n] = s["input_ids"]
        batch["attention_mask"][i, :n] = True
        batch["labels"][i, :n] = s["labels"]
        if s["video"] is not None:
            batch["video"][i] = s["video"]
            batch["has_video"][i] = True
        if has_audio_tower and s["audio"] is not None:
            batch["audio"][i] = s["audio"]
            batch["has_audio"][i] = True
    return batch
