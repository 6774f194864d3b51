"""The optimizer of a phase: AdamW on the parts that train, nothing at all on the frozen ones.

What trains is chosen by param path, never by flags in the model. A path is the "/"-joined keys of a
param, e.g. `decoder/layers/mlp/gate_proj/kernel`; the config's `optimizer.trainable` is a list of
regexes, each naming a path prefix at a "/" boundary (`connector` matches `connector/...`,
`decoder/layers/.*_proj` a subset of the decoder). The phases of the recipe:

    video_pretrain   connector                                   lr 1e-3
    video_finetune   connector, decoder                          lr 2e-5
    audio_pretrain   audio_projector                             lr 1e-3
    audio_finetune   audio_projector, audio                      lr 2e-5
    av_joint         audio_projector, audio, connector, decoder  lr 2e-5

`optax.multi_transform` gives the trainable leaves gradient clipping + AdamW and the frozen ones
`set_to_zero`, whose state is empty: frozen parts carry no Adam moments. The schedule is the original
(HF Trainer) one: linear warmup over ceil(warmup_ratio * steps) steps from 0, then cosine to 0.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import jax
import optax

TRAIN, FROZEN = "train", "frozen"


def param_path(key_path) -> str:
    """A jax key path (from tree_map_with_path) -> "decoder/layers/mlp/kernel"."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def trainable_mask(params, patterns: Sequence[str]):
    """A pytree of bools like `params`: True where some pattern names the param's path (or a prefix)."""
    compiled = [re.compile(f"(?:{p})(?:/.*)?") for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: any(c.fullmatch(param_path(kp)) for c in compiled), params)


def check_patterns(params, patterns: Sequence[str]) -> None:
    """Every pattern must name at least one param: a typo must not silently freeze a part."""
    paths = [param_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for p in patterns:
        c = re.compile(f"(?:{p})(?:/.*)?")
        if not any(c.fullmatch(x) for x in paths):
            tops = sorted({x.split("/")[0] for x in paths})
            raise ValueError(f"optimizer.trainable: '{p}' names no param (top-level parts: {tops})")


def lr_schedule(learning_rate: float, total_steps: int, warmup_ratio: float) -> optax.Schedule:
    warmup = math.ceil(total_steps * warmup_ratio)
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(total_steps, warmup + 1), 0.0)


def make_optimizer(section, total_steps: int, mask) -> optax.GradientTransformation:
    """`section`: train.config.OptimizerSection; `mask`: `trainable_mask(params, ...)`."""
    steps = [optax.clip_by_global_norm(section.max_grad_norm)] if section.max_grad_norm > 0 else []
    steps.append(optax.adamw(lr_schedule(section.learning_rate, total_steps, section.warmup_ratio),
                             b1=section.b1, b2=section.b2, eps=section.eps, weight_decay=section.weight_decay))
    labels = jax.tree_util.tree_map(lambda t: TRAIN if t else FROZEN, mask)
    return optax.multi_transform({TRAIN: optax.chain(*steps), FROZEN: optax.set_to_zero()}, labels)
