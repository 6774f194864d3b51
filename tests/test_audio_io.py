"""Audio decoding with PyAV and the original's 30 s windowing: files made here with PyAV (tones in
wav / flac / mp3 / mp4, a video without sound, a corrupt file), and the original's fbank of the real
media in tests/data/media (expected_audio.npz: `process_audio_file` / `process_audio_from_video`)."""
import logging

import numpy as np
import pytest
from test_fbank import golden_noise_std, mel_noise_std

from vllama_jax.audio import AudioError, audio_features, load_audio
from vllama_jax.preprocess.audio import clip_bounds
from vllama_jax.preprocess.fbank import PREEMPHASIS, povey_window

LEFT_HZ, RIGHT_HZ = 440.0, 1000.0
RATE = 44100
SECONDS = 1.5
LOG_FLOOR = np.float32(np.log(np.finfo(np.float32).eps))
# file -> (key prefix in expected_audio.npz, whether the sound is a video's track: the original decoded it
# with its ffmpeg binary to 16-bit samples and computed the fbank in float32; a sound file came out of
# soundfile as float64)
REAL_MEDIA = {
    "door.of.bar.raining2.wav": ("door_of_bar_raining2_wav", False),
    "sample_demo_3.mp4": ("sample_demo_3_mp4", True),
    "output_v_3V9tzjyr51I.mp4": ("output_v_3V9tzjyr51I_mp4", True),
}


def stereo_tone(n):
    t = np.arange(n) / RATE
    return np.stack([np.sin(2 * np.pi * LEFT_HZ * t), np.sin(2 * np.pi * RIGHT_HZ * t)]).astype(np.float32) * 0.5


def write_media(path, audio_codec=None, video=False, seconds=SECONDS):
    """A file with a stereo tone (440 Hz left, 1000 Hz right) in `audio_codec`, and/or a 10 fps video."""
    import av

    with av.open(str(path), "w") as out:
        vstream = astream = None
        if video:
            vstream = out.add_stream("mpeg4", rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        if audio_codec:
            astream = out.add_stream(audio_codec, rate=RATE, layout="stereo")
        if astream is not None:
            formats = [f.name for f in astream.codec_context.codec.audio_formats]
            fmt = "fltp" if "fltp" in formats else "s16"
            samples, chunk = stereo_tone(int(seconds * RATE)), 1024
            for start in range(0, samples.shape[1], chunk):
                part = samples[:, start:start + chunk]
                if fmt == "s16":  # packed integers: (1, samples * channels)
                    part = np.round(part * 32767).astype(np.int16).T.reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format=fmt, layout="stereo")
                frame.sample_rate, frame.pts = RATE, start
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))
        if vstream is not None:
            for i in range(int(seconds * 10)):
                image = np.full((48, 64, 3), 20 * i % 256, np.uint8)
                out.mux(vstream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            out.mux(vstream.encode(None))
    return str(path)


def peak_strength(wave, hz, rate=16000):
    """The spectrum's magnitude at `hz`, relative to its maximum."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return spectrum[int(round(hz * len(wave) / rate))] / spectrum.max()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    broken = d / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return {
        "wav": write_media(d / "tone.wav", "pcm_s16le"),
        "flac": write_media(d / "tone.flac", "flac"),
        "mp3": write_media(d / "tone.mp3", "libmp3lame"),
        "mp4": write_media(d / "tone.mp4", "aac", video=True),
        "silent_mp4": write_media(d / "silent.mp4", video=True),
        "broken": str(broken),
    }


@pytest.mark.parametrize("kind", ["wav", "flac", "mp3", "mp4"])
def test_load_audio_takes_the_first_channel(media, kind):
    wave = load_audio(media[kind])
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - SECONDS * 16000) < 0.05 * 16000  # codecs add or trim a few ms at the edges
    assert peak_strength(wave, LEFT_HZ) == pytest.approx(1.0)
    assert peak_strength(wave, RIGHT_HZ) < 1e-2  # the right channel is left out


def test_load_audio_mix_has_both_channels(media):
    wave = load_audio(media["mp4"], mix=True)
    assert peak_strength(wave, LEFT_HZ) > 0.9 and peak_strength(wave, RIGHT_HZ) > 0.9
    assert np.abs(wave).max() < 0.6  # mixed down (averaged), not summed


def test_video_without_audio_is_silence_with_a_warning(media, caplog):
    with caplog.at_level(logging.WARNING):
        wave = load_audio(media["silent_mp4"])
    assert np.all(wave == 0) and abs(len(wave) - SECONDS * 16000) <= 0.1 * 16000
    assert "no audio track" in caplog.text and "silent.mp4" in caplog.text
    feats = audio_features(media["silent_mp4"], round_to_bfloat16=False)
    assert feats.shape == (2998, 128) and np.all(feats == LOG_FLOOR)


def test_audio_features_of_a_sound_file(media):
    """1.5 s of tone, zero-padded to 30 s at 44.1 kHz, then resampled: the padding stays near-silent
    (the FFT resampler rings into it a little, as the original's does)."""
    feats = audio_features(media["wav"])
    assert feats.shape == (2998, 128) and feats.dtype == np.float32
    assert feats[200:].max() < feats[:140].max() - 20  # e^20 times less energy than the tone


def test_audio_features_of_a_video(media):
    """A ~1.5 s track is shorter than a clip: 8 copies of it (~12 s), then exact silence."""
    feats = audio_features(media["mp4"])
    assert feats.shape == (2998, 128) and feats.dtype == np.float32
    end = 8 * len(load_audio(media["mp4"], mix=True)) // 160  # the frame where the 8 copies end
    assert feats[end - 10:end - 3].mean(axis=1).min() > 0  # sound up to there
    assert np.all(feats[end + 1:] == np.float32(-15.9375))  # then the floor, log(eps) in bfloat16


def test_unreadable_files_name_the_file(media, tmp_path):
    with pytest.raises(AudioError, match="broken.mp4"):
        load_audio(media["broken"])
    with pytest.raises(AudioError, match="broken.mp4"):
        audio_features(media["broken"])
    with pytest.raises(FileNotFoundError, match="nothing.wav"):
        load_audio(str(tmp_path / "nothing.wav"))


def test_clip_bounds_of_a_short_track():
    """A track shorter than a clip: the whole track, 8 times (the spare time is 0)."""
    assert clip_bounds(20000) == [(0, 32000)] * 8


# --- the original's outputs on the real media -------------------------------------------------------

def bf16_spacing(x):
    """The gap between adjacent bfloat16 numbers around x (7 stored mantissa bits)."""
    return 2.0 ** (np.floor(np.log2(np.abs(x))) - 7)


@pytest.fixture(scope="module")
def expected(media_dir):
    return dict(np.load(media_dir / "expected_audio.npz"))


def int16_rounding_std(ref_log: np.ndarray) -> np.ndarray:
    """(frames, bins): std of a mel energy when two decoders' 16-bit samples round differently.

    The original's samples of a video's track come from its ffmpeg binary (AAC decoder + libswresample,
    then pcm_s16le), ours from PyAV's build of the same libraries: where their float outputs differ in the
    last bits, a sample rounds to the neighbouring 16-bit value. Bound: every sample's rounding independent,
    variance 1/12 LSB^2 (1 LSB is 1.0 after the 2**15 scaling), through pre-emphasis (gain <= 1.97) and
    the Povey window into each FFT bin. It matters only near the 16-bit noise floor of the sound.
    """
    window = povey_window(400)
    return mel_noise_std(ref_log, (1 / 12) * np.sum(window ** 2) * (1 + PREEMPHASIS) ** 2)


@pytest.mark.parametrize("name", list(REAL_MEDIA))
def test_reproduces_the_original(media_dir, expected, name):
    """The original cast its fbank to bfloat16, and so do we: where our fbank (float64) and the
    original's fall on either side of a bfloat16 rounding boundary, they round one step apart. For a
    video's track the original computed in float32 (one std of test_fbank's rounding model) on 16-bit
    samples of another FFmpeg build: the rare values where a sample rounded the other way must be
    within `int16_rounding_std`. The wav's resampler is the original's (scipy's FFT resampler): there
    only the bfloat16 rounding differs."""
    prefix, from_video_track = REAL_MEDIA[name]
    ours = audio_features(str(media_dir / name))
    ref = expected[f"{prefix}__audio_full"].astype(np.float32)  # bf16 values, stored as float16
    assert ours.shape == ref.shape == (2998, 128)
    assert np.mean(ours == ref) > 0.999  # almost every value is the same bfloat16 number
    error, allowed = np.abs(ours - ref), bf16_spacing(ref)
    if not from_video_track:
        assert np.all(error <= allowed)
        return
    energy = np.exp(ref.astype(np.float64))
    allowed = allowed + np.log1p(golden_noise_std(ref) / energy)
    # A 16-bit rounding difference shows in few values (one here): those within its bound.
    beyond = error > allowed
    assert beyond.mean() <= 1e-4, beyond.sum()
    assert np.all(error[beyond] <= (allowed + np.log1p(int16_rounding_std(ref) / energy))[beyond])


def test_silent_video_has_the_length_of_the_video(media_dir, expected):
    frames, fps = expected["output_v_3V9tzjyr51I_mp4__num_frames_fps"]
    wave = load_audio(str(media_dir / "output_v_3V9tzjyr51I.mp4"))
    assert len(wave) == round(frames / fps * 16000) and not wave.any()
