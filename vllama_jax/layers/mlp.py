"""Gated feed-forward block (SwiGLU) of Mistral / Qwen2: `down(silu(gate(x)) * up(x))`.

    x (B, L, D) -> (B, L, D), through a hidden width F = `intermediate_size`

Params (HF names): `gate_proj` and `up_proj` (embed, mlp) of shape (D, F), `down_proj` (mlp, embed) (F, D);
or `gate_up_proj` (D, 2F), the first two concatenated (gate | up), in a decoder held for generation (the
"split" decode layout: models/decoder.py `fuse_projections`).
"""
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from vllama_jax.layers.linear import Dense, default_kernel_init


class GatedMLP(nn.Module):
    hidden: int  # F
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init

    @nn.compact
    def __call__(self, x):
        dense = lambda n, axes, name: Dense(n, axes, False, self.dtype, self.param_dtype, self.kernel_init, name=name)
        if self.has_variable("params", "gate_up_proj"):  # fused by models/decoder.py `fuse_projections`
            gate, up = jnp.split(dense(2 * self.hidden, ("embed", "mlp"), "gate_up_proj")(x), 2, axis=-1)
        else:
            gate = dense(self.hidden, ("embed", "mlp"), "gate_proj")(x)
            up = dense(self.hidden, ("embed", "mlp"), "up_proj")(x)
        return dense(x.shape[-1], ("mlp", "embed"), "down_proj")(nn.silu(gate) * up)
