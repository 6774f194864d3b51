"""Gated feed-forward block (SwiGLU) of Mistral / Qwen2: `down(silu(gate(x)) * up(x))`.

    x (B, L, D) -> (B, L, D), through a hidden width F = `intermediate_size`

Params (HF names): `gate_proj` and `up_proj` (embed, mlp) of shape (D, F), `down_proj` (mlp, embed) (F, D).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vllama_jax.layers.linear import Dense


class GatedMLP(nn.Module):
    hidden: int  # F
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = lambda n, axes, name: Dense(n, axes, False, self.dtype, self.param_dtype, name=name)
        gate = dense(self.hidden, ("embed", "mlp"), "gate_proj")(x)
        up = dense(self.hidden, ("embed", "mlp"), "up_proj")(x)
        return dense(x.shape[-1], ("mlp", "embed"), "down_proj")(nn.silu(gate) * up)
