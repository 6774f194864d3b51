"""Audio for VideoLLaMA 2, the public entry points (the code lives in `vllama_jax.preprocess`):

    fbank(wave, sample_rate=16000, num_mel_bins=128)  (N,) wave in [-1, 1] -> (frames, 128) Kaldi fbank
    load_audio(path, sample_rate=16000, mix=False)    a sound file or a video's track -> (N,) float32 wave
    audio_features(path, kind=None)                   30 s of a file's sound, as the original windows it
                                                      -> (2998, 128) fbank, the input of BEATs

`fbank` scales the wave by 2**15 itself (Kaldi works on 16-bit sample values): pass waves in [-1, 1].
"""
from vllama_jax.preprocess.audio import AudioError, audio_features, load_audio
from vllama_jax.preprocess.fbank import fbank

__all__ = ["fbank", "load_audio", "audio_features", "AudioError"]
