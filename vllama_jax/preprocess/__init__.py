"""Pre-processing: media files and conversations -> the arrays and ids the model reads.

    video.py, image.py, processor.py   frames: decode, sample, pad to square, resize, normalise (`Processor`)
    audio.py, fbank.py                 sound: decode, window to 30 s, Kaldi fbank
    conversation.py                    chat templates, multimodal tokenization, training labels
"""


def __getattr__(name):
    # local: `vllama_jax.preprocess.Processor` is imported on first use, so that importing any module of this
    # package (audio, conversation: audio-only and text users) does not also load PIL, image.py and video.py.
    if name == "Processor":
        from vllama_jax.preprocess.processor import Processor
        return Processor
    raise AttributeError(f"module 'vllama_jax.preprocess' has no attribute '{name}'")
