"""Convolutions, channels-last, computed as the matmuls and shifted sums they are.

    Conv(features, kernel_size, strides=1, padding=0, groups=1, use_bias=False)
        x (B, *S, C_in) -> (B, *S', C_out), S: 1, 2 or 3 spatial dims (time, height, width)

Params as Flax's `nn.Conv` names and lays them out (so checkpoints map the same): `kernel`
(*k, C_in / groups, C_out) with logical axes `conv_t` / `conv_h` / `conv_w` (the last n of them),
`conv_in`, `conv_out`; `bias` (C_out,). `padding` as an int pads every spatial dim by that much on
both sides, like PyTorch's `padding=p`.

Three kinds of convolution take a road of their own. XLA's CPU convolutions, and their gradients most
of all, run several times slower than the same arithmetic written as a matmul, and the STC connector is
built of exactly these kinds (its RegStage blocks and sampler):
    pointwise   kernel 1 everywhere, stride 1, no padding, no groups: a matmul over channels
    patchify    kernel == stride, no groups (non-overlapping windows: the STC sampler, patch
                embeddings): the windows are cut out by a reshape and multiplied by the flat kernel
    depthwise   groups == C_in == C_out, stride 1: the sum over the kernel's taps of shifted copies
                of the input times that tap's per-channel weight
Every other convolution is `lax.conv_general_dilated`. Each road computes the convolution's sums; only
their order differs (float rounding).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Sequence, Tuple, Union

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from vllama_jax.layers.linear import dot

SPATIAL = "DHW"  # names of up to three spatial dims, for lax's dimension numbers


def _pairs(padding, n: int) -> Tuple[Tuple[int, int], ...]:
    if isinstance(padding, int):
        return ((padding, padding),) * n
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _patchify(x, kernel, padding):
    """kernel == stride: (B, *S, C) -> (B, *S', C_out) by reshaping the windows into channels."""
    n = kernel.ndim - 2
    k = kernel.shape[:n]
    x = jnp.pad(x, ((0, 0),) + padding + ((0, 0),))
    # Windows that do not fit whole are dropped, as a strided convolution drops them.
    out = [x.shape[1 + i] // k[i] for i in range(n)]
    x = x[(slice(None),) + tuple(slice(0, o * s) for o, s in zip(out, k))]
    b, c = x.shape[0], x.shape[-1]
    x = x.reshape((b,) + tuple(itertools.chain.from_iterable(zip(out, k))) + (c,))  # (B, o1, k1, o2, k2, ..., C)
    order = (0,) + tuple(1 + 2 * i for i in range(n)) + tuple(2 + 2 * i for i in range(n)) + (2 * n + 1,)
    x = x.transpose(order).reshape((b,) + tuple(out) + (math.prod(k) * c,))  # (k1, k2, ..., C): the kernel's order
    return dot(x, kernel.reshape(-1, kernel.shape[-1]), x.dtype)


def _depthwise(x, kernel, padding):
    """One filter per channel, stride 1: (B, *S, C) -> (B, *S', C)."""
    n = kernel.ndim - 2
    k = kernel.shape[:n]
    x = jnp.pad(x, ((0, 0),) + padding + ((0, 0),))
    out = [x.shape[1 + i] - k[i] + 1 for i in range(n)]
    y = None
    for tap in itertools.product(*(range(s) for s in k)):
        window = x[(slice(None),) + tuple(slice(t, t + o) for t, o in zip(tap, out))]
        term = window * kernel[tap + (0,)]
        y = term if y is None else y + term
    return y


class Conv(nn.Module):
    """A channels-last convolution (see the module docstring)."""

    features: int
    kernel_size: Sequence[int]
    strides: Union[int, Sequence[int]] = 1
    padding: Union[int, Sequence[Tuple[int, int]]] = 0
    groups: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = tuple(self.kernel_size)
        n = len(k)
        strides = (self.strides,) * n if isinstance(self.strides, int) else tuple(self.strides)
        padding = _pairs(self.padding, n)
        c_in = x.shape[-1]
        if c_in % self.groups:
            raise ValueError(f"conv '{self.name}': {c_in} input channels do not split into {self.groups} groups")
        axes = ("conv_t", "conv_h", "conv_w")[3 - n:] + ("conv_in", "conv_out")
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
                            k + (c_in // self.groups, self.features), self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        no_pad = all(p == (0, 0) for p in padding)
        if self.groups == 1 and all(s == 1 for s in k + strides) and no_pad:
            y = dot(x, kernel.reshape(c_in, self.features), self.dtype)
        elif self.groups == 1 and k == strides:
            y = _patchify(x, kernel, padding)
        elif self.groups == c_in == self.features and all(s == 1 for s in strides):
            y = _depthwise(x, kernel, padding)
        else:
            spec = "N" + SPATIAL[3 - n:] + "C"
            dims = lax.conv_dimension_numbers(x.shape, kernel.shape, (spec, SPATIAL[3 - n:] + "IO", spec))
            y = lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=dims,
                                         feature_group_count=self.groups)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y

