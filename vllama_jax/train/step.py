"""One optimizer step: forward + backward over `grad_accum` micro-batches, then the AdamW update.

    step = make_train_step(model, tx, mask, schedule, grad_accum=2)
    state, metrics = jax.jit(step, in_shardings=..., out_shardings=..., donate_argnums=0)(state, batch)

Batch: the model's batch (see `vllama_jax/models/videollama2.py`) plus `bad` (B,) bool, the rows the
data pipeline had to skip. Loss: token cross-entropy averaged over every target token of the whole
batch, so accumulating micro-batches gives the gradient of the full batch (not a mean of means). A
Mixtral decoder whose config sets `output_router_logits` adds `router_aux_loss_coef` x its
load-balancing loss (pooled over layers, per micro-batch), as HF's MixtralForCausalLM does.

Only the trainable params are differentiated: the frozen ones enter as constants, so no weight
gradients are computed or accumulated for them (XLA still runs the backward pass through a frozen
decoder when a connector before it trains). After the update the frozen params are passed through
untouched, bit for bit.

Micro-batches are strided (rows i, i + A, i + 2A, ... for A micro-batches), so each device keeps its
own rows: the split needs no communication under the batch sharding.

Metrics (scalars): loss, grad_norm (trainable grads, before clipping), lr, target_tokens, tokens
(positions the decoder attends to, media tokens included), bad_samples (this batch's skipped rows) and
bad_samples_total (the run's, kept in the state so that it survives a resume).
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from vllama_jax.models.decoder import router_aux_loss
from vllama_jax.train.loss import causal_lm_loss

MODEL_KEYS = ("input_ids", "attention_mask", "labels", "video", "has_video", "audio", "has_audio")


def router_loss_weight(config) -> float:
    """The weight of the load-balancing loss in the training loss of a VideoLLaMA2Config's model: its
    router_aux_loss_coef for a Mixtral decoder with output_router_logits (as HF trains it), else 0."""
    dec = config.decoder
    return dec.router_aux_loss_coef if dec.num_experts and dec.output_router_logits else 0.0


def make_train_step(model, tx: optax.GradientTransformation, mask, schedule: Callable, grad_accum: int = 1,
                    batch_spec=None, router_aux_loss_coef: float = 0.0) -> Callable:
    """`mask`: pytree of bools like the params (True = trains). `batch_spec`: the PartitionSpec of the
    batch axis, re-applied to the micro-batch axis after the strided split. `router_aux_loss_coef`: the
    weight of a Mixtral decoder's load-balancing loss (0: not computed; see `router_loss_weight`)."""
    flat_mask = traverse_util.flatten_dict(mask)

    def split(params):
        flat = traverse_util.flatten_dict(params)
        return ({k: v for k, v in flat.items() if flat_mask[k]}, {k: v for k, v in flat.items() if not flat_mask[k]})

    def join(trainable, frozen):
        return traverse_util.unflatten_dict({**trainable, **frozen})

    def loss_sum(trainable, frozen, batch, rng):
        inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
        variables = {"params": join(trainable, frozen)}
        if router_aux_loss_coef:
            out, state = model.apply(variables, inputs, rngs={"dropout": rng}, mutable=["intermediates"])
        else:
            out = model.apply(variables, inputs, rngs={"dropout": rng})
        mean, n = causal_lm_loss(out["logits"], out["labels"])
        if router_aux_loss_coef:  # HF MixtralForCausalLM: cross-entropy + coef x load-balancing loss
            mean = mean + router_aux_loss_coef * router_aux_loss(state["intermediates"])
        return mean * n, (n, out["attention_mask"].sum())

    value_and_grad = jax.value_and_grad(loss_sum, has_aux=True)

    def micro_batches(batch):
        def strided(x):  # (B, ...) -> (A, B/A, ...): micro-batch a = rows a, a + A, ...
            x = x.reshape((x.shape[0] // grad_accum, grad_accum) + x.shape[1:]).swapaxes(0, 1)
            if batch_spec is not None:
                x = jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(None, *batch_spec))
            return x
        return jax.tree_util.tree_map(strided, batch)

    def train_step(state: Dict, batch: Dict) -> Tuple[Dict, Dict]:
        rng, step_rng = jax.random.split(state["rng"])
        trainable, frozen = split(state["params"])

        def accumulate(carry, xs):
            mb, r = xs
            grads, total, n, tokens = carry
            # Differentiating the token-weighted sum; divided by all target tokens below.
            (loss, (mb_n, mb_tokens)), g = value_and_grad(trainable, frozen, mb, r)
            grads = jax.tree_util.tree_map(jnp.add, grads, g)
            return (grads, total + loss, n + mb_n, tokens + mb_tokens), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
        init = (zeros, jnp.float32(0), jnp.int32(0), jnp.int32(0))
        rngs = jax.random.split(step_rng, grad_accum)
        if grad_accum == 1:
            (grads, total, n, tokens), _ = accumulate(init, (batch, rngs[0]))
        else:
            (grads, total, n, tokens), _ = jax.lax.scan(accumulate, init, (micro_batches(batch), rngs))
        denom = jnp.maximum(n, 1).astype(jnp.float32)
        grads = jax.tree_util.tree_map(lambda g: g / denom, grads)

        frozen_zeros = jax.tree_util.tree_map(jnp.zeros_like, frozen)  # ignored by set_to_zero
        updates, opt_state = tx.update(join(grads, frozen_zeros), state["opt_state"], state["params"])
        new_trainable, _ = split(optax.apply_updates(state["params"], updates))
        bad = batch["bad"].sum(dtype=jnp.int32) if "bad" in batch else jnp.int32(0)
        new_state = {"params": join(new_trainable, frozen), "opt_state": opt_state, "step": state["step"] + 1,
                     "rng": rng, "bad_samples": state["bad_samples"] + bad}
        metrics = {"loss": total / denom, "grad_norm": optax.global_norm(grads), "lr": schedule(state["step"]),
                   "target_tokens": n, "tokens": tokens, "bad_samples": bad,
                   "bad_samples_total": new_state["bad_samples"]}
        return new_state, metrics

    return train_step
