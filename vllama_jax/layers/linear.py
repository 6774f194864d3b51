"""Dense (matmul + optional bias) with logically named axes: `x (..., in) -> (..., features)`.

The kernel is stored `(in, out)`, the transpose of PyTorch's `nn.Linear.weight (out, in)`; the
checkpoint key maps do that transpose when loading.

Besides a plain array, the `kernel` param may be
    QArray     int8 values (in, out) + float32 scale (out,) (quantize.py): x @ values * scale
    Packed     a float32 or int8 kernel in column strips (layers/packed.py), the CPU's decode layout
    LayerRef   layer `index` of a stacked (layers, in, out) weight (plain or QArray), as the unrolled decode
               path of models/decoder.py passes it, so the layer is read in place instead of sliced (copied).
`matmul` picks how: the CPU decode kernel (kernels/) for a few rows (decode steps), else `dot` on the
weight (unpacked / dequantized / sliced when it has to be). `dot` in turn hands a float32 product of many rows on a
single CPU device to BLAS's sgemm (layers/blas.py).
"""
from typing import Any, Callable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vllama_jax import kernels
from vllama_jax.layers import blas
from vllama_jax.layers.packed import Packed, unpack
from vllama_jax.quantize import QArray

default_kernel_init = nn.initializers.normal(stddev=0.02)  # transformers' `initializer_range` default
# PyTorch's nn.Linear default, U(-1/sqrt(in), 1/sqrt(in)) for weight and bias: what a layer built outside
# a transformers model's `post_init` starts from (the original's projectors, made when training starts).
torch_linear_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int) -> Callable:
    bound = 1.0 / fan_in ** 0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)

# Up to this many rows (batch x new tokens) a product is memory-bound: the decode kernel streams the weights
# once. Above it (prefill, training) XLA's GEMM is the faster one.
KERNEL_MAX_ROWS = 32
# int8 weights stay on the kernel for more rows: it converts each weight once per 8 rows, read from L2,
# where the other road first writes a float32 copy of the weight for the GEMM (a 128-row prompt of a
# 374M decoder: 0.39 against 0.73 s, AVX-512 VM, 2026-11-28).
INT8_KERNEL_MAX_ROWS = 128


class LayerRef:
    """Layer `index` of the stacked weight `stacked` (layers, in, out): what the unrolled decode passes as a
    `kernel`. Not a pytree: it lives only inside one traced function. `shape` is the one layer's shape (what
    Flax checks a param against)."""

    def __init__(self, stacked, index: int):
        self.stacked, self.index = stacked, index

    @classmethod
    def whole(cls, weight):
        """An unstacked (in, out) weight as a reference (index 0 of itself, seen as (1, in, out))."""
        ref = cls(weight, 0)
        ref.unstacked = True
        return ref

    unstacked = False

    @property
    def shape(self):
        return self.stacked.shape if self.unstacked else self.stacked.shape[1:]

    def materialize(self):
        s = self.stacked
        if self.unstacked:
            return s
        if isinstance(s, QArray):
            return QArray(s.values[self.index], s.scale[self.index])
        return s[self.index]


def matmul(x, kernel, dtype):
    """x (..., in) @ kernel (in, out) in `dtype`; `kernel` an array, a QArray, a Packed or a LayerRef."""
    rows = 1
    for d in x.shape[:-1]:
        rows *= d
    stacked, index = (kernel.stacked, kernel.index) if isinstance(kernel, LayerRef) else (kernel, 0)
    if isinstance(stacked, Packed):
        # Any number of rows: on packed strips the kernel is a register-blocked product that also beat
        # the GEMMs on prompts (AVX-512 VM, 1024 x 6144 weight, 512 rows: 13.4 ms against XLA's 14.4 and
        # OpenBLAS's 26.0). No gradient: the packed layout is for inference (training holds the stack).
        if dtype == jnp.float32 and kernels.usable(x.astype(dtype)):
            y = kernels.matvec_packed(x.reshape(rows, x.shape[-1]).astype(jnp.float32), stacked.values, stacked.scale)
            return y[:, :stacked.n].reshape(x.shape[:-1] + (stacked.n,))
        kernel = stacked = unpack(stacked)  # no kernel here (another dtype): back to (in, out)
    max_rows = INT8_KERNEL_MAX_ROWS if isinstance(stacked, QArray) else KERNEL_MAX_ROWS
    if isinstance(kernel, (QArray, LayerRef)) and rows <= max_rows and dtype == jnp.float32 \
            and kernels.usable(x.astype(dtype)):
        x2 = x.reshape(rows, x.shape[-1]).astype(jnp.float32)
        if isinstance(stacked, QArray):
            y = kernels.matvec(x2, stacked.values, index, stacked.scale)
        else:
            y = kernels.matvec(x2, stacked, index)
        return y.reshape(x.shape[:-1] + (y.shape[-1],))
    if isinstance(kernel, LayerRef):
        kernel = kernel.materialize()
    if isinstance(kernel, QArray):
        # Dequantized product: (x @ values) * scale, the int8 -> float convert fused by XLA where it can.
        return dot(x, kernel.values, dtype) * kernel.scale.astype(dtype)
    return dot(x, kernel, dtype)


# Weights (in x out elements) below which XLA:GPU rewrites a one-row product as multiply + reduce (jax 0.11,
# H200: a (2048, 3072) weight was rewritten, a (3584, 3584) one was not).
GPU_SMALL_PRODUCT = 10_000_000


def dot(x, w, dtype=jnp.float32):
    """x (..., in) @ w (in, out) in `dtype`.

    On the CPU the leading dims are folded into one (rows, in) x (in, out) product: with them kept apart,
    XLA:CPU takes the weight gradient x^T dy through a transposing copy of dy, a scalar loop that made a
    training step of the demo's decoder 4x slower than the products themselves. Elsewhere (GPU, TPU: no
    such copy) the einsum keeps the leading dims, so their shardings pass through unchanged. On a GPU a
    one-row product with a small weight gets a second, zero row (below).
    """
    x, w = x.astype(dtype), w.astype(dtype)
    if x.size == x.shape[-1] and w.ndim == 2 and w.size < GPU_SMALL_PRODUCT and jax.default_backend() == "gpu":
        # One row (a batch-1 decode step) against a matrix under XLA:GPU's size limit: XLA rewrites that
        # product into a broadcast multiply and a column reduction with a weight-sized temporary between
        # them (2-3x the weight's reads, two kernels). A second, zero row keeps it a GEMM that reads the
        # weight once: a 1B decoder's batch-1 decode on an H200 723 -> 893 tokens/s. Larger matrices stay
        # GEMMs on their own and skip the extra row (it cost 1.7 % at 7B).
        x2 = jnp.concatenate([x.reshape(1, -1), jnp.zeros((1, x.shape[-1]), dtype)])
        return jnp.dot(x2, w)[:1].reshape(x.shape[:-1] + (w.shape[-1],))
    if jax.default_backend() == "cpu" and w.ndim == 2:
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] > KERNEL_MAX_ROWS and blas.usable(x2, x2.shape[0] * w.shape[0] * w.shape[1]):
            y = blas.matmul(x2, w)
        elif x.ndim > 2:
            y = jnp.dot(x2, w)
        else:
            return jnp.dot(x, w)
        return y.reshape(x.shape[:-1] + (w.shape[-1],))
    return jnp.einsum("...i,io->...o", x, w)


class Dense(nn.Module):
    features: int
    axes: Tuple[str, str] = ("embed", "mlp")  # logical names of (in, out)
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                            (x.shape[-1], self.features), self.param_dtype)
        y = matmul(x, kernel, self.dtype)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, self.axes[1:]),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y
