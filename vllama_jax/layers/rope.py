"""Rotary position embedding (RoPE), the non-interleaved "rotate half" form of Mistral / Qwen2 / Mixtral.

`apply_rope(x (B, L, H, hd), positions (B, L), theta) -> (B, L, H, hd)`. Angles are computed in float32
from integer positions, so left-padded rows (positions counted over their real tokens) rotate exactly as
the PyTorch reference does.
"""
import jax.numpy as jnp


def rope_angles(positions, head_dim: int, theta: float):
    """cos, sin of shape (B, L, head_dim) for integer `positions` (B, L)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, L, hd/2)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def _rotate_half(x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, positions, theta: float):
    cos, sin = rope_angles(positions, x.shape[-1], theta)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
    x32 = x.astype(jnp.float32)
    return (x32 * cos + _rotate_half(x32) * sin).astype(x.dtype)
