"""What an evaluation result depends on, written beside it so that anyone can rerun it exactly.

    block = describe(model_dir, annotations, settings={"dtype": "float32", "num_frames": 8, ...})
    differences(old_block, block)  -> ["model.files.model.safetensors", ...]: empty when the same

The block holds the sha256 of the model's files (config, tokenizer, weights, also those of a vision
tower folder inside the checkpoint) and of the annotation file(s), the versions of the libraries that
compute the answer (jax and jaxlib for the numerics, transformers for the tokenizer), the backend,
and the settings the caller passes (dtype, frames, tokens, prompt template ...). Files are hashed
streaming, a MiB at a time, so a 15 GB checkpoint needs no more memory than a tiny one.
"""
from __future__ import annotations

import hashlib
import os
import platform
from typing import Dict, List

import vllama_jax

# What in a checkpoint folder decides the answers: configs, tokenizer files and weights. (Not the
# fixtures, notebooks or READMEs that folders also carry.)
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".model", ".txt", ".tiktoken")


def sha256_file(path: str, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def hash_files(path: str, suffixes=None) -> Dict[str, str]:
    """{path relative to `path`: sha256} of a file or of a folder's files (recursively, sorted)."""
    if os.path.isfile(path):
        return {os.path.basename(path): sha256_file(path)}
    out = {}
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and (suffixes is None or name.endswith(suffixes)):
                full = os.path.join(root, name)
                out[os.path.relpath(full, path)] = sha256_file(full)
    return out


# What a training run's code is: its Python, its phase configs and the C++ of the CPU kernels.
SOURCE_SUFFIXES = (".py", ".yaml", ".cc")


def source_digest(*paths: str) -> str:
    """One sha256 over the source files under `paths` (folders or files; SOURCE_SUFFIXES): each file's
    name under its folder and its bytes. It names the code a run was trained with where there is no git
    (an installed package), and changes when any of those files does."""
    h = hashlib.sha256()
    for path in paths:
        for rel, digest in hash_files(path, SOURCE_SUFFIXES).items():
            h.update(f"{os.path.basename(os.path.normpath(path))}/{rel} {digest}\n".encode())
    return h.hexdigest()


def versions() -> Dict[str, str]:
    import jax
    import jaxlib

    out = {"vllama_jax": vllama_jax.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "python": platform.python_version()}
    try:
        import transformers
        out["transformers"] = transformers.__version__
    except ImportError:  # no tokenizer library: the model ran on ids alone
        pass
    return out


def describe(model_path: str, annotations: str, settings: dict) -> dict:
    import jax

    return {
        "model": {"path": os.path.abspath(model_path), "files": hash_files(model_path, MODEL_FILE_SUFFIXES)},
        "annotations": {"path": os.path.abspath(annotations), "files": hash_files(annotations, (".json", ".jsonl"))},
        "versions": versions(),
        "backend": jax.default_backend(),
        **settings,
    }


def differences(old: dict, new: dict, prefix: str = "") -> List[str]:
    """Dotted keys whose values differ. Folder locations ("path") are left out: a moved checkpoint with
    the same hashes is the same checkpoint."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key == "path":
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out
