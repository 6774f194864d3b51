"""vllama-jax: VideoLLaMA 2 (DAMO-NLP-SG) in JAX/Flax.

    import vllama_jax as vj
    model = vj.load("path/to/VideoLLaMA2-7B")
    model.chat("What happens in this video?", video="clip.mp4")
"""
import os

__version__ = "0.1.0"

# On the CPU the products of prefill and training go to numpy's OpenBLAS (layers/blas.py), between XLA's
# own ops. OpenBLAS's workers spin for 2^28 cycles (~0.1 s) after each product before they sleep, taking a
# core from the XLA ops that follow: the STC connector's training step was ~15 % slower for it. 2^4 cycles
# makes them sleep at once. Read when OpenBLAS loads (with numpy), so it holds where vllama_jax is imported
# first (the `vllama-jax` command); a value set by the user is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def load(path, **kwargs):
    """Load a VideoLLaMA 2 checkpoint folder, a plain HF folder of a supported part, or a BEATs `.pt`."""
    # local: every `vllama_jax.*` import runs this file first; imported at the top, loading would make
    # `vllama-jax --help` and light modules (config, cli) pay for JAX, Flax and the whole model.
    from vllama_jax.loading import load as _load
    return _load(path, **kwargs)
