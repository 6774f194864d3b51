"""Next-token cross-entropy, as the original (HF CausalLM) computes it.

`causal_lm_loss(logits (B, L, V), labels (B, L)) -> (mean loss, number of target tokens)`: position t
predicts labels[t + 1]; labels equal to -100 (IGNORE_INDEX) do not count. Computed in float32.
"""
import jax
import jax.numpy as jnp

from vllama_jax.config import IGNORE_INDEX


def token_cross_entropy(logits, labels):
    """Per-position loss (B, L-1) and its weight mask (B, L-1) for the shifted targets."""
    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(valid, logz - picked, 0.0), valid


def causal_lm_loss(logits, labels):
    losses, valid = token_cross_entropy(logits, labels)
    n = valid.sum()
    return losses.sum() / jnp.maximum(n, 1), n
