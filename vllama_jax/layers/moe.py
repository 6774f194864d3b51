"""Sparse mixture of experts of Mixtral: a router picks the top-k of N SwiGLU experts for every token.

    x (B, L, D) -> (B, L, D)

Per token, as HF's MixtralSparseMoeBlock does it: router logits `gate(x)` (B, L, N); keep the k largest;
their softmax (softmax over all N then renormalised over the top k, which is the same thing) weighs the
chosen experts' outputs `w2(silu(w1 x) * w3 x)`.

Params (HF names, experts stacked on a leading `expert` axis):
    gate/kernel   (embed, expert)        (D, N)
    experts/w1    (expert, embed, mlp)   (N, D, F)   gate projection
    experts/w3    (expert, embed, mlp)   (N, D, F)   up projection
    experts/w2    (expert, mlp, embed)   (N, F, D)   down projection

Two ways to run the experts (`dispatch`), same result:
    "dense"    every expert on every token, then combine with the (mostly zero) routing weights. N/k times
               the FLOPs, but plain einsums: it shards over the `expert` mesh axis with no extra code, and
               is the simplest to read. The default.
    "grouped"  tokens sorted by expert and run with `jax.lax.ragged_dot`: only the k chosen experts' FLOPs.
               Best on one device or with the expert axis unsharded.

For the Switch-Transformer load-balancing loss, each layer sows its router statistics as
`intermediates/router_stats` (stacked per layer under `nn.scan`); `load_balancing_loss` pools them over
all layers, as HF's `load_balancing_loss_func` does, and training adds it with `router_aux_loss_coef`
when the config has `output_router_logits` (as HF's MixtralForCausalLM does).
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vllama_jax.layers.linear import Dense, default_kernel_init

DISPATCH_MODES = ("dense", "grouped")


def router_stats(router_logits, top_idx, token_mask=None):
    """One layer's routing over its valid tokens, for the load-balancing loss:
    {"assigned": (N,) top-k assignments per expert, "probs": (N,) summed router probabilities, "rows": ()}.

    router_logits (B, L, N) float32; top_idx (B, L, k); token_mask (B, L) or None (every token counts).
    """
    n = router_logits.shape[-1]
    probs = jax.nn.softmax(router_logits, axis=-1)
    assigned = jax.nn.one_hot(top_idx, n, dtype=jnp.float32).sum(axis=-2)  # (B, L, N), sums to k per token
    w = jnp.ones(router_logits.shape[:-1], jnp.float32) if token_mask is None else token_mask.astype(jnp.float32)
    return {"assigned": jnp.einsum("ble,bl->e", assigned, w), "probs": jnp.einsum("ble,bl->e", probs, w),
            "rows": w.sum()}


def load_balancing_loss(stats):
    """Switch-Transformer auxiliary loss N * sum_e f_e * P_e from `router_stats`, pooled over any leading
    (layer) axes: f_e the share of all layers' top-k assignments that go to expert e, P_e its mean router
    probability. Pooling before the product is HF's definition (not a mean of per-layer losses)."""
    n = stats["assigned"].shape[-1]
    assigned = stats["assigned"].reshape(-1, n).sum(axis=0)
    probs = stats["probs"].reshape(-1, n).sum(axis=0)
    rows = jnp.maximum(stats["rows"].sum(), 1.0)
    return n * jnp.sum((assigned / rows) * (probs / rows))


class Experts(nn.Module):
    """N SwiGLU experts with stacked weights; runs each token through its chosen experts and sums them
    weighted. x (B, L, D), top_idx (B, L, k) int, top_weights (B, L, k) -> (B, L, D)."""

    num_experts: int
    hidden: int  # F
    dispatch: str = "dense"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init

    def _weights(self, d):
        n, f = self.num_experts, self.hidden
        param = lambda name, axes, shape: self.param(
            name, nn.with_logical_partitioning(self.kernel_init, axes), shape, self.param_dtype).astype(self.dtype)
        return (param("w1", ("expert", "embed", "mlp"), (n, d, f)),
                param("w3", ("expert", "embed", "mlp"), (n, d, f)),
                param("w2", ("expert", "mlp", "embed"), (n, f, d)))

    @nn.compact
    def __call__(self, x, top_idx, top_weights):
        if self.dispatch not in DISPATCH_MODES:
            raise ValueError(f"MoE dispatch '{self.dispatch}' is not one of {DISPATCH_MODES}")
        w1, w3, w2 = self._weights(x.shape[-1])
        x = x.astype(self.dtype)
        if self.dispatch == "dense":
            combine = jnp.einsum("blke,blk->ble", jax.nn.one_hot(top_idx, self.num_experts, dtype=self.dtype),
                                 top_weights.astype(self.dtype))  # (B, L, N): zero for experts not chosen
            h = nn.silu(jnp.einsum("bld,edf->blef", x, w1)) * jnp.einsum("bld,edf->blef", x, w3)
            y = jnp.einsum("blef,efd->bled", h, w2)
            return jnp.einsum("bled,ble->bld", y, combine)
        return self._grouped(x, top_idx, top_weights, w1, w3, w2)

    def _grouped(self, x, top_idx, top_weights, w1, w3, w2):
        b, l, d = x.shape
        k = top_idx.shape[-1]
        flat_expert = top_idx.reshape(-1)  # (T*k,), one row per (token, choice)
        order = jnp.argsort(flat_expert, stable=True)
        rows = x.reshape(b * l, d)[order // k]  # token rows, grouped by expert
        group_sizes = jnp.bincount(flat_expert, length=self.num_experts).astype(jnp.int32)
        h = nn.silu(jax.lax.ragged_dot(rows, w1, group_sizes)) * jax.lax.ragged_dot(rows, w3, group_sizes)
        y_sorted = jax.lax.ragged_dot(h, w2, group_sizes)
        y = jnp.zeros_like(y_sorted).at[order].set(y_sorted).reshape(b, l, k, d)
        return jnp.einsum("blkd,blk->bld", y, top_weights.astype(self.dtype))


class SparseMoE(nn.Module):
    """Router (`gate`) + `experts`. x (B, L, D), token_mask (B, L) (for the aux loss only) -> (B, L, D)."""

    num_experts: int
    top_k: int
    hidden: int
    dispatch: str = "dense"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init

    @nn.compact
    def __call__(self, x, token_mask: Optional[jax.Array] = None):
        router_logits = Dense(self.num_experts, ("embed", "expert"), False, self.dtype, self.param_dtype,
                              self.kernel_init, name="gate")(x).astype(jnp.float32)
        top_logits, top_idx = jax.lax.top_k(router_logits, self.top_k)
        top_weights = jax.nn.softmax(top_logits, axis=-1)
        self.sow("intermediates", "router_stats", router_stats(router_logits, top_idx, token_mask))
        return Experts(self.num_experts, self.hidden, self.dispatch, self.dtype, self.param_dtype, self.kernel_init,
                       name="experts")(x, top_idx, top_weights)
