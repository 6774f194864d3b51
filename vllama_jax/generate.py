"""Generation: prefill + decode with a KV cache in one jitted `lax.while_loop`.

    generate_from_embeds(decode_fn, params, inputs_embeds (B, L, D), attention_mask (B, L), ...)
        -> tokens (B, max_new_tokens) int32

The prompt is LEFT-aligned first (each row's real tokens end at position L - 1), so every row writes its
next token at the same cache slot and one compiled step serves the whole batch. RoPE positions are
counted over each row's real tokens, so a padded row generates exactly what it would alone.

Sampling: temperature 0 is greedy; otherwise temperature, then top-k (0 = off), then top-p (1.0 = off),
then a categorical draw from `rng`. Each row stops at its first EOS (`eos_ids`); later slots hold
`pad_id`. `stream` (a Python callable `(step, tokens (B,))`) is called once per step from inside the
loop (an ordered host callback), for streaming text to a terminal.

Shapes are static: compile once per (B, L, max_new_tokens) bucket; callers pad L to a few buckets.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import io_callback


class ContextLengthError(ValueError):
    """The prompt plus the tokens to generate do not fit the decoder's context."""


def check_context(prompt_len: int, max_new_tokens: int, max_positions: int, what: str = "prompt"):
    if prompt_len + max_new_tokens > max_positions:
        raise ContextLengthError(
            f"{what} of {prompt_len} tokens (text plus media features) + max_new_tokens {max_new_tokens} = "
            f"{prompt_len + max_new_tokens} exceeds the model's context of {max_positions} positions; "
            "shorten the prompt, use fewer frames, or lower max_new_tokens (or load with max_context=N to run "
            "RoPE past the trained length)")


def left_align(embeds, mask):
    """Move each row's attended positions to the right end: (B, L, D), (B, L) -> same shapes.

    Works for right padding (the splice's output) and for rows already left-padded; the relative order
    of a row's attended positions is kept.
    """
    b, l = mask.shape
    mask = mask.astype(bool)
    # Stable sort key: padding first, then the attended positions in their order.
    order = jnp.argsort(jnp.where(mask, 1, 0) * l + jnp.arange(l)[None, :], axis=1)
    return (jnp.take_along_axis(embeds, order[..., None], axis=1),
            jnp.take_along_axis(mask, order, axis=1))


def sample_next(logits, rng, temperature: float, top_k: int, top_p: float):
    """(B, V) logits -> (B,) token ids. `temperature`, `top_k`, `top_p` are static Python numbers."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    neg = jnp.finfo(jnp.float32).min
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, neg, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def generate_from_embeds(decode_fn: Callable, params, inputs_embeds, attention_mask, *, init_cache: Callable,
                         max_new_tokens: int, eos_ids: Sequence[int] = (), pad_id: int = 0,
                         temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=None,
                         stream: Optional[Callable] = None):
    """Traceable core (call it inside `jax.jit`).

    decode_fn(params, inputs_embeds=None, input_ids=None, *, attention_mask (B, S), positions (B, L),
              cache, cache_index) -> (logits (B, L, V), cache)
    init_cache(batch, max_len) -> an empty cache.
    """
    b, l = attention_mask.shape
    total = l + max_new_tokens
    embeds, mask = left_align(inputs_embeds, attention_mask)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    key_mask = jnp.zeros((b, total), bool).at[:, :l].set(mask)
    cache = init_cache(b, total)
    logits, cache = decode_fn(params, inputs_embeds=embeds, attention_mask=key_mask, positions=positions,
                              cache=cache, cache_index=0)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    eos = jnp.asarray(list(eos_ids) or [-1], jnp.int32)

    def body(state):
        step, tokens, done, cache, key_mask, last_logits, pos, rng = state
        rng, sub = jax.random.split(rng)
        tok = sample_next(last_logits, sub, temperature, top_k, top_p)
        tok = jnp.where(done, pad_id, tok)
        tokens = tokens.at[:, step].set(tok)
        if stream is not None:
            io_callback(stream, None, step, tok, ordered=True)
        done = done | jnp.isin(tok, eos)
        key_mask = key_mask.at[:, l + step].set(True)
        pos = pos + 1
        logits, cache = decode_fn(params, input_ids=tok[:, None], attention_mask=key_mask, positions=pos[:, None],
                                  cache=cache, cache_index=l + step)
        return step + 1, tokens, done, cache, key_mask, logits[:, -1], pos, rng

    def cond(state):
        step, _, done = state[:3]
        return (step < max_new_tokens) & ~jnp.all(done)

    state = (jnp.int32(0), jnp.full((b, max_new_tokens), pad_id, jnp.int32), jnp.zeros((b,), bool), cache,
             key_mask, logits[:, -1], positions[:, -1], rng)
    return jax.lax.while_loop(cond, body, state)[1]

