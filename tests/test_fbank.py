"""Kaldi fbank against the golden values of the original's preprocessing (torchaudio's
`compliance.kaldi.fbank`, tests/data/fixtures/fbank/): a two-tone signal, white noise, and a 500-sample
wave that makes one frame."""
import numpy as np
import pytest

from vllama_jax.audio import fbank
from vllama_jax.preprocess.fbank import mel_banks

SIGNALS = ("tone", "noise", "short")
TOL = 1e-3
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "fbank" / "fbank.npz"))


def float32_fft_error_bound(reference_log: np.ndarray) -> np.ndarray:
    """(frames, 1): how far the reference's mel energies can be from exact, from its float32 FFT alone.

    The golden values were computed in float32. A 512-point FFT in float32 puts an error of up to about
    2 * log2(512) * eps * P into each bin's power (P the frame's power, the rounding growing by one eps
    per radix-2 stage), and a mel energy sums at most W bins' worth of weight (the widest triangle).
    In a bin far below P, such as the top bins of a pure tone, that is more than 1e-3 in log: torchaudio
    itself, run here in float32, differs from these golden values by 7e-3 there.
    """
    widest = mel_banks(128, 512, 16000.0).sum(axis=0).max()
    frame_power = np.exp(reference_log.astype(np.float64)).sum(axis=1, keepdims=True)
    return 2 * np.log2(512) * widest * EPS32 * frame_power


@pytest.mark.parametrize("name", SIGNALS)
def test_fbank_matches_golden(golden, name):
    """Energies agree to 1e-3 relative (1e-3 in log) plus the reference's own float32 rounding bound."""
    ours = fbank(golden[f"{name}_wave"])
    ref = golden[f"{name}_fbank"]
    assert ours.shape == ref.shape and ours.dtype == np.float32
    e_ours, e_ref = np.exp(ours.astype(np.float64)), np.exp(ref.astype(np.float64))
    allowed = TOL * e_ref + float32_fft_error_bound(ref)
    assert np.all(np.abs(e_ours - e_ref) <= allowed), np.max(np.abs(e_ours - e_ref) / allowed)


def test_fbank_matches_golden_noise_to_1e3_in_log(golden):
    """White noise has energy in every bin, far above float32 rounding: 1e-3 in log everywhere."""
    ours = fbank(golden["noise_wave"])
    assert np.max(np.abs(ours - golden["noise_fbank"])) <= TOL


def test_one_frame(golden):
    assert fbank(golden["short_wave"]).shape == (1, 128)
    wave = golden["tone_wave"]
    assert fbank(wave[:400]).shape == (1, 128)  # exactly one 25 ms window
    assert fbank(wave[:400 + 159]).shape == (1, 128)  # a partial second window is dropped (snip_edges)
    assert fbank(wave[:400 + 160]).shape == (2, 128)


def test_silence_is_the_log_floor():
    assert np.all(fbank(np.zeros(16000)) == np.float32(np.log(EPS32)))


@pytest.mark.parametrize("length", [0, 1, 399])
def test_too_short_is_an_error(length):
    with pytest.raises(ValueError, match=f"{length} samples"):
        fbank(np.zeros(length, np.float32))


def test_not_mono_is_an_error():
    with pytest.raises(ValueError, match=r"shape \(2, 1000\)"):
        fbank(np.zeros((2, 1000), np.float32))
