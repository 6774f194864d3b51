"""Checkpoint I/O: HF/PyTorch files -> our params (key maps per model), and Orbax save/restore."""
from vllama_jax.checkpoints.keymap import CheckpointError, KeyMap, to_params, to_state_dict  # noqa: F401
from vllama_jax.checkpoints.hf_files import read_state_dict  # noqa: F401
