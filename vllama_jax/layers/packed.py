"""A Dense kernel packed in column strips for the CPU decode kernel: `(K, N) -> (S, K, 32)`, S = ceil(N / 32).

    pack(w)   w (K, N) float array or QArray  -> Packed(values (S, K, 32), scale (32 S,) or None, n=N)
    unpack(p) -> the (K, N) array or QArray it was made from (exactly)

Strip s holds columns [32 s, 32 s + 32) of every row, row after row, so one strip is one contiguous run of
memory. A decode step reads every weight once; the kernel (kernels/matvec.cc `vj_matvec_packed_*`) gives
each thread whole strips, i.e. one sequential stream, which the hardware prefetcher follows at the
memory's full rate, where the row-major (K, N) layout has each thread read a chunk of rows as many
interleaved streams (a 374M decoder's step: 35 -> 27 ms at 1 row, 42 -> 32 ms at 8; AVX-512 VM,
2026-11-28). The CPU's "packed" decode layout (models/decoder.py) holds the decoder's kernels this way;
products of more rows than the kernel takes (a long prompt) unpack the weight first: one copy, small
beside the matrix product it feeds.

N is padded to a multiple of 32 with zero columns (int8: scale 1); the kernel's output is cut back to N.
int8 values keep their per-column scale (quantize.py), flattened to (32 S,) in column order.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vllama_jax.quantize import QArray, quantize_int8

STRIP = 32  # columns per strip: two AVX-512 registers of float32


@dataclasses.dataclass(frozen=True)
class Packed:
    """`values` (S, K, 32) float32 or int8; `scale` (32 S,) float32 for int8 values, else None; `n` the
    kernel's true output width. `shape` is the kernel's own (K, n): what Flax checks a param against."""

    values: Any
    scale: Any
    n: int

    @property
    def shape(self):
        return (self.values.shape[-2], self.n)

    @property
    def ndim(self):
        return 2

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def nbytes(self):
        return self.values.nbytes + (0 if self.scale is None else self.scale.nbytes)


jax.tree_util.register_dataclass(Packed, data_fields=["values", "scale"], meta_fields=["n"])


def _xp(x):
    return np if isinstance(x, np.ndarray) else jnp


def pack(w) -> Packed:
    """A (K, N) kernel (numpy or jax array, or QArray) in strips; numpy stays numpy (packed on the host)."""
    values, scale = (w.values, w.scale) if isinstance(w, QArray) else (w, None)
    xp = _xp(values)
    k, n = values.shape
    s = -(-n // STRIP)
    if s * STRIP != n:
        values = xp.pad(values, ((0, 0), (0, s * STRIP - n)))
        if scale is not None:
            scale = xp.pad(scale, (0, s * STRIP - n), constant_values=1.0)
    strips = values.reshape(k, s, STRIP).transpose(1, 0, 2)
    return Packed(np.ascontiguousarray(strips) if xp is np else strips, scale, n)


def unpack(p: Packed):
    """The (K, N) array (or QArray) `p` was packed from."""
    s, k, _ = p.values.shape
    values = p.values.transpose(1, 0, 2).reshape(k, s * STRIP)[:, :p.n]
    if p.scale is None:
        return values
    return QArray(values, p.scale[:p.n])


def quantize_packed(p: Packed) -> Packed:
    """int8 with one scale per output column, exactly `pack(quantize_int8(unpack(p)))` (the padding
    columns are zeros: scale 1, values 0)."""
    q = quantize_int8(p.values)  # per (strip, column) over K: the kernel's columns
    return Packed(q.values, q.scale.reshape(-1), p.n)
