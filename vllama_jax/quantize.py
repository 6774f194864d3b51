"""int8 weight-only quantization of the decoder's matmul kernels, with one float32 scale per output channel.

    quantize_params(params, "int8") -> the same tree with each decoder Dense kernel w (..., K, N) replaced by
        QArray(values int8 (..., K, N), scale float32 (..., N)),  w ~= values * scale[..., None, :]
    dequantize(q) -> (..., K, N) float

scale[n] = max_k |w[k, n]| / 127 (symmetric, per output channel, per layer of a stacked kernel), values =
round(w / scale): the error of any weight is at most scale / 2, i.e. 1/254 of its column's largest weight.
Activations stay float (weight-only): x @ w = (x @ values) * scale, exactly as the dequantized product.

What is quantized: the `kernel` of every Dense under the decoder (q/k/v/o projections, gate/up/down, the LM
head). Kept in float: the embedding table (one row is read per token), norms, biases, the Mixtral router
(its top-k choices are sensitive) and experts, the vision / audio towers and connectors (compute-bound
prefill work, where int8 saves no time).

A QArray is a pytree (its leaves are `values` then `scale`), so the param tree still jits, slices under
`nn.scan` and saves like any other; `layers/linear.py` multiplies by it (the int8 CPU decode kernel for a
few rows, else dequantize-then-dot).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("int8",)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
    """int8 `values` (..., K, N) times float32 `scale` (..., N) broadcast over K. `values` comes first among
    the leaves, so Flax's shape check of an existing param sees the kernel's own shape."""

    values: Any
    scale: Any

    @property
    def shape(self):
        return self.values.shape

    @property
    def ndim(self):
        return self.values.ndim

    @property
    def nbytes(self):
        return self.values.nbytes + self.scale.nbytes


def quantize_int8(w) -> QArray:
    """(..., K, N) float -> QArray, per output channel (the last axis), reduced over K."""
    w32 = jnp.asarray(w, jnp.float32)
    amax = jnp.max(jnp.abs(w32), axis=-2)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)  # an all-zero column keeps scale 1 and values 0
    values = jnp.clip(jnp.round(w32 / scale[..., None, :]), -127, 127).astype(jnp.int8)
    return QArray(values, scale.astype(jnp.float32))


_quantize_int8_jit = jax.jit(quantize_int8)


def dequantize(q: QArray, dtype=jnp.float32):
    return (q.values.astype(jnp.float32) * q.scale[..., None, :]).astype(dtype)


def is_decoder_kernel(key_path) -> bool:
    """Whether a jax key path names a decoder Dense kernel: what int8 quantizes and the packed decode layout
    packs (models/decoder.py), but not the Mixtral router (block_sparse_moe/gate/kernel)."""
    path = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)
    return path[-1] == "kernel" and not (len(path) >= 2 and path[-2] == "gate" and "block_sparse_moe" in path)


def quantize_decoder(params, mode: str = "int8"):
    """A decoder's param tree (models/decoder.py) with its Dense kernels as QArrays."""
    if mode not in MODES:
        raise ValueError(f"quantize='{mode}' is not supported; expected one of {MODES}")

    from vllama_jax.layers.packed import Packed, quantize_packed  # (it builds on this module)

    def convert(key_path, w):
        if isinstance(w, Packed):  # the CPU's packed decode layout: quantized in place, still packed
            return _quantize_packed_jit(w) if w.scale is None and is_decoder_kernel(key_path) else w
        if is_decoder_kernel(key_path) and np.ndim(w) >= 2 and not isinstance(w, QArray):
            return _quantize_int8_jit(w)  # one kernel (or layer stack) at a time: peak memory ~ its float32
        return w

    _quantize_packed_jit = jax.jit(quantize_packed)
    # Paths through dicts and, for split layers (models/decoder.py `split_layers`), the per-layer tuple.
    return jax.tree_util.tree_map_with_path(convert, params, is_leaf=lambda x: isinstance(x, (QArray, Packed)))


def quantize_params(params, mode: str = "int8", part: str = "videollama2"):
    """Quantize the decoder of a whole VideoLLaMA 2 tree (`params["decoder"]`) or a bare decoder's tree
    (`part="decoder"`)."""
    if part == "decoder":
        return quantize_decoder(params, mode)
    return {**params, "decoder": quantize_decoder(params["decoder"], mode)}


def is_quantized(params) -> bool:
    from vllama_jax.layers.packed import Packed

    leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, (QArray, Packed)))
    return any(isinstance(x, QArray) or (isinstance(x, Packed) and x.scale is not None) for x in leaves)


def weight_bytes(params) -> int:
    """Bytes held by a param tree (int8 values and their scales counted as stored)."""
    return int(sum(np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes
                   for x in jax.tree_util.tree_leaves(params)))
