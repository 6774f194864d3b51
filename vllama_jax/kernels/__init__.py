"""CPU kernels, built on first use and called through XLA's FFI.

    matvec(x (M, K) f32, w (L, K, N) or (K, N), layer, scale=None (L, N) or (N,)) -> (M, N) f32   (matvec.cc)
    matvec_packed(x (M, K) f32, w (S, K, 32), scale=None (32 S,)) -> (M, 32 S) f32          (matvec.cc)
    gemm(a, b, trans_a=False, trans_b=False) -> op(a) (..., M, K) @ op(b) (..., K, N), f32        (gemm.cc)

matvec: the decode steps' memory-bound products (a few rows); `w` float32, or int8 with a
per-output-channel `scale`; `layer` picks the matrix of a stacked weight in place. matvec_packed: the same
on a weight packed in column strips (layers/packed.py), the CPU's decode layout. gemm: the large
products of prefill and training, handed to the sgemm of the OpenBLAS that numpy ships (faster than
XLA:CPU's own GEMM: gemm.cc); `trans_a` / `trans_b` read an operand stored transposed, as the gradients'
products need.

`available()` / `gemm_available()` say whether a kernel could be set up: both need a C++ compiler
(`$CXX`, else g++ or c++) and XLA's FFI headers (shipped with jaxlib); gemm also numpy's OpenBLAS. Each
source is compiled once per machine with -march=native (it runs where it is built) into
`$VLLAMA_JAX_CACHE/kernels/` (default ~/.cache/vllama_jax/kernels) and registered as the custom calls
`vj_matvec_f32` / `vj_matvec_s8` / `vj_matvec_packed_f32` / `vj_matvec_packed_s8` / `vj_gemm_f32` for the
CPU platform.

Callers keep an XLA fallback (layers/linear.py): without a compiler everything still runs, only slower;
`VLLAMA_JAX_KERNELS=0` turns the kernels off, `VLLAMA_JAX_BLAS=0` the sgemm alone (it is also left out where
numpy's OpenBLAS runs AVX2 kernels on an AVX-512 CPU, XLA's GEMM being faster there; `VLLAMA_JAX_BLAS=1`
takes it anyway). The custom calls have no
gradient of their own: matvec is used for inference only (decode steps; matvec_packed for every product of
the packed decode layout, prompts included); linear.py gives gemm its gradient as two more gemm calls.
"""
from __future__ import annotations

import ctypes
import glob
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
_GEMM_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gemm.cc")
_lock = threading.Lock()
_state = {"tried": False, "ok": False, "error": None, "lib": None}
_gemm_state = {"tried": False, "ok": False, "error": None, "lib": None, "blas": None}


def _cache_dir() -> str:
    root = os.environ.get("VLLAMA_JAX_CACHE", os.path.expanduser("~/.cache/vllama_jax/jit"))
    return os.path.join(os.path.dirname(root.rstrip("/")) if root.rstrip("/").endswith("jit") else root, "kernels")


def _compiler():
    for c in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if c and shutil.which(c):
            return c
    return None


def _build(source: str = _SOURCE) -> str:
    """Compile `source` (matvec.cc, gemm.cc; a variant of one for benchmarks/decode_kernel.py) once per
    source text, compiler, flags and jaxlib version, and return the .so path."""
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
    stem = os.path.splitext(os.path.basename(source))[0]
    so = os.path.join(out_dir, f"vj_{stem}_{key}.so")
    if not os.path.exists(so):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        proc = subprocess.run([cxx, *flags, source, "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"{cxx} failed: {proc.stderr[-2000:]}")
        os.replace(tmp, so)  # atomic: concurrent processes see a whole library or none
    return so


def _set_up_once(state: dict, what: str, switches, set_up) -> bool:
    """Run `set_up()` (-> extra state) once per process; False, with a logged reason, when it fails or one
    of the environment `switches` is "0". Callers then run on XLA's own dot, only slower."""
    if state["tried"]:
        return state["ok"]
    with _lock:
        if state["tried"]:
            return state["ok"]
        try:
            for var in switches:
                if os.environ.get(var, "1") == "0":
                    raise RuntimeError(f"turned off by {var}=0")
            state.update(ok=True, **set_up())
        except Exception as e:
            state["error"] = str(e)
            log.warning("vllama_jax %s unavailable (%s); using XLA's dot", what, e)
        state["tried"] = True
    return state["ok"]


def _register_matvec() -> dict:
    lib = ctypes.cdll.LoadLibrary(_build())
    for name in ("vj_matvec_f32", "vj_matvec_s8", "vj_matvec_packed_f32", "vj_matvec_packed_s8"):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return {"lib": lib}


def available() -> bool:
    """Build and register the decode kernels once per process (False when they cannot be)."""
    return _set_up_once(_state, "CPU decode kernels", ("VLLAMA_JAX_KERNELS",), _register_matvec)


def _numpy_sgemm():
    """The address of `cblas_sgemm` (64-bit integers) in the OpenBLAS that numpy's wheel ships, loaded by
    numpy already (dlopen of the same file returns that copy, so numpy and we share one thread pool)."""
    libs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(np.__file__))), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas64_*.so*"))):
        blas = ctypes.CDLL(path)
        for symbol in ("scipy_cblas_sgemm64_", "cblas_sgemm64_"):
            if hasattr(blas, symbol):
                return blas, ctypes.cast(getattr(blas, symbol), ctypes.c_void_p)
    raise RuntimeError(f"no 64-bit-integer OpenBLAS in {libs} (numpy built against another BLAS)")


# OpenBLAS cores with AVX-512 kernels (its DYNAMIC_ARCH names, lower case).
_AVX512_BLAS_CORES = ("skylakex", "cooperlake", "sapphirerapids")


def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


def _blas_core(blas) -> str:
    for symbol in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
        if hasattr(blas, symbol):
            fn = getattr(blas, symbol)
            fn.restype = ctypes.c_char_p
            return (fn() or b"").decode()
    return ""


def _blas_preferred(core: str) -> bool:
    """Whether OpenBLAS on its `core` kernels is the faster GEMM here (see `_register_gemm`)."""
    return not (_cpu_has_avx512() and bool(core) and core.lower() not in _AVX512_BLAS_CORES)


def _register_gemm() -> dict:
    blas, sgemm = _numpy_sgemm()
    core = _blas_core(blas)
    # Where OpenBLAS did not recognise an AVX-512 CPU (a Zen 5 runs its "Haswell" kernels) it has half the
    # vector width of XLA's own GEMM, which was faster there (AVX-512 VM, 2026-11-28: a 16-frame video's
    # prefill 2.6 s against 3.7 s through BLAS, a fine-tune step 9.9 against 12.9 s): the call is set up
    # (tests, VLLAMA_JAX_BLAS=1) but not preferred.
    preferred = _blas_preferred(core)
    if not preferred:
        log.info("numpy's OpenBLAS runs its %s kernels on this AVX-512 CPU: large products stay with XLA "
                 "(VLLAMA_JAX_BLAS=1 sends them to BLAS anyway)", core)
    lib = ctypes.cdll.LoadLibrary(_build(_GEMM_SOURCE))
    lib.vj_gemm_set_sgemm(sgemm)
    jax.ffi.register_ffi_target("vj_gemm_f32", jax.ffi.pycapsule(lib.vj_gemm_f32), platform="cpu")
    return {"lib": lib, "blas": blas, "core": core, "preferred": preferred}


def gemm_available() -> bool:
    """Build and register the sgemm call once per process (False when it cannot be)."""
    return _set_up_once(_gemm_state, "CPU sgemm", ("VLLAMA_JAX_KERNELS", "VLLAMA_JAX_BLAS"), _register_gemm)


def gemm_usable(x) -> bool:
    """Whether `gemm` may run here: a single CPU device (a custom call is not partitioned: across devices
    XLA would gather its operands), float32, the call set up, and its BLAS the faster GEMM on this CPU
    (or VLLAMA_JAX_BLAS=1)."""
    return (jax.default_backend() == "cpu" and jax.device_count() == 1 and x.dtype == jnp.float32
            and gemm_available()
            and (_gemm_state.get("preferred", True) or os.environ.get("VLLAMA_JAX_BLAS") == "1"))


def gemm(a, b, trans_a: bool = False, trans_b: bool = False):
    """op(a) @ op(b) in float32: a (..., M, K), or (..., K, M) with trans_a; b (..., K, N), or (..., N, K)
    with trans_b; the same leading (batch) dims on both."""
    m = a.shape[-1] if trans_a else a.shape[-2]
    n = b.shape[-2] if trans_b else b.shape[-1]
    out = jax.ShapeDtypeStruct(a.shape[:-2] + (m, n), jnp.float32)
    return jax.ffi.ffi_call("vj_gemm_f32", out, vmap_method="sequential")(a, b, trans_a=trans_a, trans_b=trans_b)


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


def matvec_packed(x, w, scale=None):
    """x (M, K) f32 @ a packed weight w (S, K, 32) (f32, or int8 times `scale` (32 S,)) -> (M, 32 S) f32."""
    out = jax.ShapeDtypeStruct((x.shape[0], w.shape[-3] * w.shape[-1]), jnp.float32)
    if scale is None:
        return jax.ffi.ffi_call("vj_matvec_packed_f32", out)(x, w, layer=np.int64(0))
    return jax.ffi.ffi_call("vj_matvec_packed_s8", out)(x, w, scale.astype(jnp.float32), layer=np.int64(0))
