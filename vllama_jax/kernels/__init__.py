"""CPU kernels for decoding, built on first use and called through XLA's FFI (matvec.cc).

    matvec(x (M, K) f32, w (L, K, N) or (K, N), layer, scale=None (L, N) or (N,)) -> (M, N) f32

`w` float32, or int8 with a per-output-channel `scale`; `layer` picks the matrix of a stacked weight in
place. `available()` says whether the kernel could be built: it needs a C++ compiler (`$CXX`, else g++ or
c++) and XLA's FFI headers (shipped with jaxlib). It is compiled once per machine with -march=native (it
runs where it is built) into `$VLLAMA_JAX_CACHE/kernels/` (default ~/.cache/vllama_jax/kernels) and
registered as the custom calls `vj_matvec_f32` / `vj_matvec_s8` for the CPU platform.

Callers keep an XLA fallback (layers/linear.py): without a compiler everything still runs, only slower;
`VLLAMA_JAX_KERNELS=0` turns the kernels off. The custom calls have no gradient: they are used for
inference only (decode steps), never in training.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "matvec.cc")
_lock = threading.Lock()
_state = {"tried": False, "ok": False, "error": None, "lib": None}


def _cache_dir() -> str:
    root = os.environ.get("VLLAMA_JAX_CACHE", os.path.expanduser("~/.cache/vllama_jax/jit"))
    return os.path.join(os.path.dirname(root.rstrip("/")) if root.rstrip("/").endswith("jit") else root, "kernels")


def _compiler():
    for c in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if c and shutil.which(c):
            return c
    return None


def _build(source: str = _SOURCE) -> str:
    """Compile `source` (matvec.cc; a variant of it for benchmarks/decode_kernel.py) once per source text,
    compiler, flags and jaxlib version, and return the .so path."""
    import jaxlib

    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (set $CXX or install g++)")
    flags = ["-O3", "-march=native", "-mprefer-vector-width=512", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno",
             "-I", jax.ffi.include_dir()]
    with open(source, "rb") as f:
        src = f.read()
    key = hashlib.sha256(src + " ".join([cxx] + flags + [jaxlib.__version__]).encode()).hexdigest()[:16]
    out_dir = _cache_dir()
    os.makedirs(out_dir, exist_ok=True)
    so = os.path.join(out_dir, f"vj_matvec_{key}.so")
    if not os.path.exists(so):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        proc = subprocess.run([cxx, *flags, source, "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"{cxx} failed: {proc.stderr[-2000:]}")
        os.replace(tmp, so)  # atomic: concurrent processes see a whole library or none
    return so


def available() -> bool:
    """Build and register the kernels once per process; False (with a logged reason) when they cannot be."""
    if _state["tried"]:
        return _state["ok"]
    with _lock:
        if _state["tried"]:
            return _state["ok"]
        try:
            if os.environ.get("VLLAMA_JAX_KERNELS", "1") == "0":
                raise RuntimeError("turned off by VLLAMA_JAX_KERNELS=0")
            lib = ctypes.cdll.LoadLibrary(_build())
            for name in ("vj_matvec_f32", "vj_matvec_s8"):
                jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
            _state.update(ok=True, lib=lib)
        except Exception as e:  # inference still runs on XLA's own dot, only slower
            _state["error"] = str(e)
            log.warning("vllama_jax CPU decode kernels unavailable (%s); using XLA's dot", e)
        _state["tried"] = True
    return _state["ok"]


def usable(x) -> bool:
    """Whether `matvec` may run here: kernels built, CPU backend, float32 activations."""
    return jax.default_backend() == "cpu" and x.dtype == jnp.float32 and available()


def matvec(x, w, layer: int = 0, scale=None):
    """x (M, K) f32 @ w[layer] (K, N) (f32, or int8 times `scale[layer]` (N,)) -> (M, N) f32."""
    m, n = x.shape[0], w.shape[-1]
    out = jax.ShapeDtypeStruct((m, n), jnp.float32)
    if scale is None:
        return jax.ffi.ffi_call("vj_matvec_f32", out)(x, w, layer=np.int64(layer))
    return jax.ffi.ffi_call("vj_matvec_s8", out)(x, w, scale.astype(jnp.float32), layer=np.int64(layer))
