"""Pre-processing: media files and conversations -> the arrays and ids the model reads.

    video.py, image.py, processor.py   frames: decode, sample, pad to square, resize, normalise (`Processor`)
    audio.py, fbank.py                 sound: decode, window to 30 s, Kaldi fbank
    conversation.py                    chat templates, multimodal tokenization, training labels
"""


def __getattr__(name):
    # `vllama_jax.preprocess.Processor`, imported on first use so that audio-only users skip PyAV/PIL set-up.
    if name == "Processor":
        from vllama_jax.preprocess.processor import Processor
        return Processor
    raise AttributeError(f"module 'vllama_jax.preprocess' has no attribute '{name}'")
