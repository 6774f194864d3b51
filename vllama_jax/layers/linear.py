"""Dense (matmul + optional bias) with logically named axes: `x (..., in) -> (..., features)`.

The kernel is stored `(in, out)`, the transpose of PyTorch's `nn.Linear.weight (out, in)`; the
checkpoint key maps do that transpose when loading.
"""
from typing import Any, Callable, Tuple

import flax.linen as nn
import jax.numpy as jnp

default_kernel_init = nn.initializers.normal(stddev=0.02)


class Dense(nn.Module):
    features: int
    axes: Tuple[str, str] = ("embed", "mlp")  # logical names of (in, out)
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                            (x.shape[-1], self.features), self.param_dtype)
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y
