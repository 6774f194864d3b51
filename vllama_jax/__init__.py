"""vllama-jax: VideoLLaMA 2 (DAMO-NLP-SG) in JAX/Flax.

    import vllama_jax as vj
    model = vj.load("path/to/VideoLLaMA2-7B")
    model.chat("What happens in this video?", video="clip.mp4")
"""
__version__ = "0.1.0"


def load(path, **kwargs):
    """Load a VideoLLaMA 2 checkpoint folder, a plain HF folder of a supported part, or a BEATs `.pt`."""
    # local: every `vllama_jax.*` import runs this file first; imported at the top, loading would make
    # `vllama-jax --help` and light modules (config, cli) pay for JAX, Flax and the whole model.
    from vllama_jax.loading import load as _load
    return _load(path, **kwargs)
