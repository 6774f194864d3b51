"""Multi-head attention, one module for every model: decoders (causal, RoPE, grouped-query, KV cache,
sliding window), the vision towers (bidirectional, biased projections) and BEATs (additive bias).

    x (B, L, D) -> (B, L, D)

Params: `q_proj` (embed, heads), `k_proj` / `v_proj` (embed, kv), `o_proj` (heads, embed); the key
maps give them the checkpoint's names (`out_proj` in CLIP / BEATs). A decoder held for generation (the
"split" decode layout) may carry `qkv_proj` instead, the three concatenated along the output axis (q | k | v): one
matmul per step (models/decoder.py `fuse_projections`).

KV cache: a dict `{"k": (B, S, KVH, hd), "v": (B, S, KVH, hd)}` plus the write slot `index` (int32
scalar, or (B,) one per row) passed alongside. The L new keys/values are written at slots
[index, index + L); a query at slot index + i sees the slots <= index + i that `mask` marks valid.
Static shapes throughout, so one compiled step serves every decode position.
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vllama_jax.layers import blas
from vllama_jax.layers.linear import KERNEL_MAX_ROWS, Dense, default_kernel_init
from vllama_jax.layers.rope import apply_rope

# A large negative number rather than -inf, so a row with nothing to attend to (a padding query)
# stays finite instead of becoming NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def dot_product_attention(q, k, v, mask=None, bias=None, scale=None):
    """Softmax attention with grouped-query heads.

    q (B, Lq, H, hd); k, v (B, Lk, KVH, hd) with H a multiple of KVH; mask broadcastable to
    (B, H, Lq, Lk) bool (True = attend); bias broadcastable to (B, H, Lq, Lk), added to the logits.
    Softmax in float32. Returns (B, Lq, H, hd).
    """
    b, lq, h, hd = q.shape
    lk, kvh = k.shape[1], k.shape[2]
    groups = h // kvh
    scale = hd ** -0.5 if scale is None else scale
    # Heads first, and a KV head's query groups folded into its query rows: (B, KVH, G * Lq, hd). Both
    # products are then plain batched matmuls whose (Lq, Lk) outputs need no transpose; contracted in the
    # (B, Lq, H, hd) layout, XLA:CPU transposed the (B, H, Lq, Lk) logits and their gradient (1.4x the time).
    qh = q.reshape(b, lq, kvh, groups, hd).transpose(0, 2, 3, 1, 4).reshape(b, kvh, groups * lq, hd)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, KVH, Lk, hd)
    # Prefill and training on one CPU device: both products through BLAS (layers/blas.py). Decode steps
    # (a few query rows) stay with XLA, which fuses them with the cache reads.
    on_blas = (lq > KERNEL_MAX_ROWS and k.dtype == v.dtype == jnp.float32
               and blas.usable(qh, b * h * lq * lk * hd))
    if on_blas:
        logits = blas.matmul(qh, kh, trans_b=True) * scale
    else:
        logits = jnp.einsum("bkqd,bksd->bkqs", qh, kh).astype(jnp.float32) * scale
    logits = logits.reshape(b, h, lq, lk)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype).reshape(b, kvh, groups * lq, lk)
    if on_blas:
        out = blas.matmul(probs, vh)  # (B, KVH, G * Lq, hd)
    else:
        out = jnp.einsum("bkqs,bksd->bkqd", probs, vh)
    return out.reshape(b, kvh, groups, lq, hd).transpose(0, 3, 1, 2, 4).reshape(b, lq, h, hd)


def causal_mask(q_slots, k_slots, sliding_window: Optional[int] = None):
    """(…, Lq, Lk) bool: key slot <= query slot (and within the window when one is set)."""
    allowed = k_slots[..., None, :] <= q_slots[..., :, None]
    if sliding_window is not None:
        allowed &= k_slots[..., None, :] > q_slots[..., :, None] - sliding_window
    return allowed


class Attention(nn.Module):
    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    out_bias: bool = False
    rope_theta: Optional[float] = None  # None: no rotary embedding
    causal: bool = False
    sliding_window: Optional[int] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init

    @nn.compact
    def __call__(self, x, *, positions=None, mask=None, bias=None, cache=None, cache_index=None):
        """x (B, L, D). positions (B, L) int (RoPE). mask: (B, Lk) bool key-validity (Lk = L, or the cache
        length S with a cache) or a full (B, 1|H, L, Lk) bool mask. bias: additive (B|1, H, L, Lk).
        Returns (out (B, L, D), new_cache or None)."""
        b, l, d = x.shape
        dense = lambda n, axes, bias_, name: Dense(n, axes, bias_, self.dtype, self.param_dtype, self.kernel_init,
                                                   name=name)
        nq, nkv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if self.has_variable("params", "qkv_proj"):  # fused by models/decoder.py `fuse_projections`
            qkv = dense(nq + 2 * nkv, ("embed", "heads"), self.qkv_bias, "qkv_proj")(x)
            q, k, v = jnp.split(qkv, (nq, nq + nkv), axis=-1)
        else:
            q = dense(nq, ("embed", "heads"), self.qkv_bias, "q_proj")(x)
            k = dense(nkv, ("embed", "kv"), self.qkv_bias, "k_proj")(x)
            v = dense(nkv, ("embed", "kv"), self.qkv_bias, "v_proj")(x)
        q = q.reshape(b, l, self.num_heads, self.head_dim)
        k = k.reshape(b, l, self.num_kv_heads, self.head_dim)
        v = v.reshape(b, l, self.num_kv_heads, self.head_dim)
        if self.rope_theta is not None:
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(l), (b, l))
            q = apply_rope(q, positions, self.rope_theta)
            k = apply_rope(k, positions, self.rope_theta)

        new_cache = None
        q_slots = jnp.arange(l)
        if cache is not None:
            index = jnp.asarray(cache_index, jnp.int32)
            if index.ndim == 0:
                ck = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, index, 0, 0))
                cv = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, index, 0, 0))
            else:  # (B,) a write slot per row (continuous batching: rows at different lengths)
                write = jax.vmap(lambda c, x, i: jax.lax.dynamic_update_slice(c, x, (i, 0, 0)))
                ck = write(cache["k"], k.astype(cache["k"].dtype), index)
                cv = write(cache["v"], v.astype(cache["v"].dtype), index)
                index = index[:, None]  # q_slots (B, L)
            new_cache = {"k": ck, "v": cv}
            k, v = ck.astype(self.dtype), cv.astype(self.dtype)
            q_slots = q_slots + index
        k_slots = jnp.arange(k.shape[1])

        full_mask = None
        if mask is not None:
            full_mask = mask[:, None, None, :] if mask.ndim == 2 else mask
            full_mask = full_mask.astype(bool)
        if self.causal:
            cm = causal_mask(q_slots, k_slots, self.sliding_window)
            cm = cm[None, None] if cm.ndim == 2 else cm[:, None]  # (1|B, 1, L, Lk)
            full_mask = cm if full_mask is None else (full_mask & cm)

        out = dot_product_attention(q, k, v, mask=full_mask, bias=bias)
        out = out.reshape(b, l, self.num_heads * self.head_dim)
        out = Dense(d, ("heads", "embed"), self.out_bias, self.dtype, self.param_dtype, self.kernel_init,
                    name="o_proj")(out)
        return out, new_cache
