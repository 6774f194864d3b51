"""Audio decoding (PyAV) and the original's 30 s windowing into the fbank BEATs reads.

    load_audio(path)      -> (N,) float32 mono wave in [-1, 1] at 16 kHz
    audio_features(path)  -> (2998, 128) float32 Kaldi fbank of 30 s of audio

VideoLLaMA 2 prepares audio in two ways, and `audio_features` follows whichever applies:

- a sound file (`process_audio_file`): the first channel at the file's own rate, cut to 30 s (the
  original picks a random 30 s window of a longer file; we take the first, to be deterministic),
  zero-padded to 30 s, then resampled to 16 kHz with an FFT resampler (librosa's "fft" method, which
  is `scipy.signal.resample`; we call scipy directly). Padding before resampling matters: the FFT
  resampler rings at the edge of the sound into the padding, and that ringing is in the original's
  features.
- the sound track of a video (`process_audio_from_video`): `ffmpeg -ac 1 -ar 16000 -f s16le`, i.e.
  all channels mixed to mono and resampled by libswresample to 16-bit samples. We run the same
  library through PyAV's `AudioResampler` with the same target (s16, mono, 16 kHz), so no ffmpeg
  binary is needed. Then 8 clips of 2 s starting at k/8 of the spare time, k = 0..7 (pytorchvideo's
  `ConstantClipsPerVideoSampler`, see `clip_bounds`), concatenated (16 s) and zero-padded to 30 s.
  A video without a sound track gives silence, with a warning.

Both end with `fbank(wave)` over 480000 samples (2998 frames), cast to bfloat16 as the original does
(the values come back as float32; pass `round_to_bfloat16=False` to keep full precision).
"""
from __future__ import annotations

import logging
import math
import os
from fractions import Fraction
from typing import List, Optional, Tuple

import ml_dtypes
import numpy as np

from vllama_jax.preprocess.fbank import fbank

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW_SECONDS = 30  # every audio input is 30 s: (2998, 128) fbank frames
CLIP_SECONDS = 2  # a video's track: 8 clips of 2 s
CLIPS_PER_VIDEO = 8

# PyAV sample formats -> the value of full scale, to map integer samples into [-1, 1) as soundfile does.
_FULL_SCALE = {"u8": 128.0, "s16": 2.0 ** 15, "s32": 2.0 ** 31, "s64": 2.0 ** 63, "flt": 1.0, "dbl": 1.0}


class AudioError(ValueError):
    """A media file whose sound cannot be read (corrupt, not media); the message names the file."""


def _open(path: str):
    import av

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such media file")
    try:
        return av.open(path)
    except av.FFmpegError as e:
        raise AudioError(f"{path}: cannot open as audio or video ({e})") from e


def _audio_stream(container):
    return container.streams.audio[0] if container.streams.audio else None


def _has_video(container) -> bool:
    import av

    # Cover art in a music file is a one-picture "video" stream; it does not make the file a video.
    return any(not s.disposition & av.stream.Disposition.attached_pic for s in container.streams.video)


def _duration_seconds(container) -> float:
    return 0.0 if container.duration is None else container.duration / 1e6  # AV_TIME_BASE is microseconds


def _frame_samples(frame) -> np.ndarray:
    """One decoded frame as (channels, samples) float64 in [-1, 1]."""
    fmt = frame.format
    data = frame.to_ndarray()
    if not fmt.is_planar:  # packed: (1, samples * channels), channels interleaved
        data = data.reshape(-1, len(frame.layout.channels)).T
    data = data.astype(np.float64)
    name = fmt.name.rstrip("p")
    if name == "u8":
        data -= 128.0
    return data / _FULL_SCALE[name]


def _decode(path: str, container, stream) -> Tuple[np.ndarray, int]:
    """Every channel at the stream's own rate: ((channels, N) float64, sample_rate)."""
    import av

    chunks = []
    try:
        for frame in container.decode(stream):
            chunks.append(_frame_samples(frame))
    except av.FFmpegError as e:
        raise AudioError(f"{path}: cannot decode the audio ({e})") from e
    if not chunks:
        raise AudioError(f"{path}: the audio stream holds no samples")
    return np.concatenate(chunks, axis=1), stream.codec_context.sample_rate


def _decode_ffmpeg_mono(path: str, container, stream, sample_rate: int) -> np.ndarray:
    """What `ffmpeg -i path -ac 1 -ar RATE -f s16le -` gives: (N,) float32, libswresample's mono mix."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    chunks = []
    try:
        for frame in container.decode(stream):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]  # flush
    except av.FFmpegError as e:
        raise AudioError(f"{path}: cannot decode the audio ({e})") from e
    if not chunks:
        raise AudioError(f"{path}: the audio stream holds no samples")
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def _resample_fft(wave: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """The original's resampler for sound files (librosa `res_type="fft"` = scipy.signal.resample)."""
    if rate == sample_rate:
        return wave
    import scipy.signal

    return scipy.signal.resample(wave, int(math.ceil(wave.shape[-1] * sample_rate / rate)), axis=-1)


def _silence(path: str, container, sample_rate: int) -> np.ndarray:
    seconds = _duration_seconds(container)
    logger.warning("%s: no audio track; using %.2f s of silence", path, seconds)
    return np.zeros(int(round(seconds * sample_rate)), np.float32)


def load_audio(path: str, sample_rate: int = SAMPLE_RATE, mix: bool = False) -> np.ndarray:
    """The sound of `path` (wav, mp3, flac, a video's track) as a (N,) float32 wave in [-1, 1].

    mix=False takes the first channel, as the original does for sound files, and resamples it with
    soxr (high quality, fast at any length; the original's FFT resampler is slow on lengths with
    large prime factors, and `audio_features` only needs it on 30 s windows); mix=True mixes all
    channels to mono through libswresample, as the original's ffmpeg call does for a video's track.
    A file without a sound track gives silence as long as the file (and a logged warning); a missing
    file is a FileNotFoundError, an unreadable one an AudioError, both naming the file.
    """
    with _open(path) as container:
        stream = _audio_stream(container)
        if stream is None:
            return _silence(path, container, sample_rate)
        if mix:
            return _decode_ffmpeg_mono(path, container, stream, sample_rate)
        wave, rate = _decode(path, container, stream)
    if rate != sample_rate:
        import soxr

        return soxr.resample(wave[0], rate, sample_rate).astype(np.float32)
    return wave[0].astype(np.float32)


def clip_bounds(num_samples: int, sample_rate: int = SAMPLE_RATE, clip_seconds: int = CLIP_SECONDS,
                num_clips: int = CLIPS_PER_VIDEO) -> List[Tuple[int, int]]:
    """Sample ranges [start, end) of the clips the original takes from a video's track.

    Clip k starts at k * max(duration - clip, 0) / num_clips seconds and lasts `clip_seconds` (a track
    shorter than one clip gives the whole track num_clips times). Dividing by num_clips, not
    num_clips - 1, is what the pytorchvideo release the original ran with does (its sources on GitHub
    now divide by num_clips - 1); the original's outputs on sample_demo_3.mp4 show it: the last clip
    ends 1/8 of the spare time before the track does. Exact rational arithmetic and truncation to a
    sample index, as pytorchvideo and the original's `int(t * sample_rate)` do, so the bounds match
    sample for sample.
    """
    duration = num_samples / sample_rate
    spacing = Fraction(max(duration - clip_seconds, 0)) / num_clips
    bounds = []
    for k in range(num_clips):
        start = spacing * k
        bounds.append((int(start * sample_rate), int((start + clip_seconds) * sample_rate)))
    return bounds


def _fit_window(wave: np.ndarray, length: int) -> np.ndarray:
    """The first `length` samples, zero-padded at the end when the wave is shorter."""
    wave = wave[:length]
    return np.pad(wave, (0, length - wave.shape[0]))


def _sound_file_window(path: str, container, sample_rate: int) -> np.ndarray:
    """`process_audio_file`: the first channel's first 30 s at the file's rate, padded, then resampled."""
    stream = _audio_stream(container)
    if stream is None:
        raise AudioError(f"{path}: no audio stream")
    wave, rate = _decode(path, container, stream)
    return _resample_fft(_fit_window(wave[0], WINDOW_SECONDS * rate), rate, sample_rate)


def _video_track_window(path: str, container, sample_rate: int) -> np.ndarray:
    """`process_audio_from_video`: 8 clips of the mono track (or of silence), concatenated, padded."""
    stream = _audio_stream(container)
    if stream is None:
        wave = _silence(path, container, sample_rate)
    else:
        wave = _decode_ffmpeg_mono(path, container, stream, sample_rate)
    clips = [wave[a:b] for a, b in clip_bounds(wave.shape[0], sample_rate)]
    return _fit_window(np.concatenate(clips), WINDOW_SECONDS * sample_rate)


def audio_features(path: str, kind: Optional[str] = None, sample_rate: int = SAMPLE_RATE,
                   num_mel_bins: int = 128, round_to_bfloat16: bool = True) -> np.ndarray:
    """(2998, num_mel_bins) float32: the fbank of 30 s of `path`'s sound, windowed as the original does.

    kind: "audio" (a sound file: `process_audio_file`) or "video" (a video's track:
    `process_audio_from_video`); None picks "video" when the file has a video stream.
    """
    if kind not in (None, "audio", "video"):
        raise ValueError(f"{path}: kind must be 'audio' or 'video', got {kind!r}")
    with _open(path) as container:
        if kind is None:
            kind = "video" if _has_video(container) else "audio"
        window = _video_track_window if kind == "video" else _sound_file_window
        wave = window(path, container, sample_rate)
    feats = fbank(wave, sample_rate=sample_rate, num_mel_bins=num_mel_bins)
    if round_to_bfloat16:
        feats = feats.astype(ml_dtypes.bfloat16).astype(np.float32)
    return feats
