"""Kaldi-compatible log-mel filterbank, the audio features BEATs reads.

    wave (N,) float in [-1, 1], 16 kHz  ->  fbank (frames, num_mel_bins) float32
    frames = 1 + (N - 400) // 160        (25 ms windows every 10 ms, no partial window at the end)

It reproduces `torchaudio.compliance.kaldi.fbank` with the settings VideoLLaMA 2 uses (dither 0, povey
window, pre-emphasis 0.97, DC removal, 512-point power spectrum, Kaldi's mel triangles from 20 Hz to
Nyquist, natural log floored at float32 epsilon). Plain numpy: it runs on the host in the data
pipeline, where a (2998, 128) filterbank of 30 s of audio takes milliseconds.

Precision: computed in float64, returned in float32. The original runs torchaudio in float32, whose FFT
rounding shows in mel bins 10^12 below a frame's peak (the top bins of a pure tone): there the two differ
by up to ~5% in energy (0.05 in log), the reference's rounding, not ours; elsewhere by < 1e-3 in log.

Scaling: Kaldi works on 16-bit sample values, so this function multiplies the wave by 2**15 itself;
callers pass the usual float wave in [-1, 1] (as the original does before calling torchaudio).
"""
from __future__ import annotations

import functools

import numpy as np

# Kaldi's defaults as VideoLLaMA 2 calls them (only num_mel_bins and the sample rate are ever changed).
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
POVEY_POWER = 0.85
# The log floor: `numeric_limits<float>::epsilon()`, whatever the compute precision.
LOG_FLOOR = float(np.finfo(np.float32).eps)


def _mel(freq):
    return 1127.0 * np.log(1.0 + np.asarray(freq, np.float64) / 700.0)


@functools.lru_cache(maxsize=8)
def mel_banks(num_mel_bins: int, fft_size: int, sample_rate: float) -> np.ndarray:
    """(fft_size // 2 + 1, num_mel_bins) float64: Kaldi's triangles, linear in mel, over the power spectrum.

    Triangle b rises from mel_low + b*delta to its peak at + (b+1)*delta and falls to + (b+2)*delta,
    the bins evenly spaced in mel between LOW_FREQ and Nyquist. The Nyquist FFT bin gets weight 0
    (Kaldi builds the triangles over the first fft_size // 2 bins only). At 128 bins the lowest
    triangles are narrower than one FFT bin, so some of them catch no bin at all and stay at the floor.
    """
    nyquist = 0.5 * sample_rate
    mel_low, mel_high = _mel(LOW_FREQ), _mel(nyquist)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    left = mel_low + delta * np.arange(num_mel_bins)[:, None]
    center, right = left + delta, left + 2 * delta
    mel = _mel(sample_rate / fft_size * np.arange(fft_size // 2))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = np.maximum(0.0, np.minimum(up, down))  # (bins, fft_size // 2)
    weights = np.pad(weights, ((0, 0), (0, 1)))  # the Nyquist bin
    return np.ascontiguousarray(weights.T)


@functools.lru_cache(maxsize=8)
def povey_window(size: int) -> np.ndarray:
    """A symmetric Hann window raised to 0.85: Kaldi's default."""
    n = np.arange(size)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / (size - 1))
    return hann ** POVEY_POWER


def fbank(wave, sample_rate: int = 16000, num_mel_bins: int = 128) -> np.ndarray:
    """Log-mel filterbank of a mono float wave in [-1, 1]: (frames, num_mel_bins) float32.

    Raises ValueError when the wave is not 1-D or is shorter than one 25 ms window.
    """
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1:
        raise ValueError(f"fbank: expected a mono wave of shape (N,), got shape {wave.shape}")
    window = int(sample_rate * FRAME_LENGTH_MS / 1000)
    shift = int(sample_rate * FRAME_SHIFT_MS / 1000)
    if wave.shape[0] < window:
        raise ValueError(f"fbank: the wave has {wave.shape[0]} samples, fewer than one "
                         f"{FRAME_LENGTH_MS:g} ms window ({window} samples at {sample_rate} Hz)")
    fft_size = 1 << (window - 1).bit_length()  # next power of two: 400 -> 512

    num_frames = 1 + (wave.shape[0] - window) // shift
    out = np.full((num_frames, num_mel_bins), np.log(LOG_FLOOR), np.float32)
    # A frame of zeros (the padding after a short track: often most of the 30 s window) has zero energy
    # in every bin, so its row is the log floor: only the frames with sound are computed.
    windows = np.lib.stride_tricks.sliding_window_view(wave, window)[::shift][:num_frames]  # no copy
    live = np.flatnonzero(np.any(windows != 0.0, axis=1))
    if live.size == 0:
        return out
    frames = windows[live] * 2.0 ** 15  # (live frames, window)

    frames -= frames.mean(axis=1, keepdims=True)
    # Pre-emphasis x[i] - 0.97 x[i-1]; Kaldi uses x[0] itself as the sample before the first.
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = (frames - PREEMPHASIS * previous) * povey_window(window)

    power = np.abs(np.fft.rfft(frames, n=fft_size, axis=1)) ** 2  # (frames, fft_size // 2 + 1)
    energies = power @ mel_banks(num_mel_bins, fft_size, float(sample_rate))
    out[live] = np.log(np.maximum(energies, LOG_FLOOR))
    return out
