"""The demo's init: its frozen random towers calibrated to features that vary around zero (data-dependent),
and its connector's RegNet blocks started as their shortcuts.

    params = calibrate_towers(model, params, batches)   # model: VideoLLaMA2; batches: the train code's dicts
    stats = tower_stats(model, params, batches)          # what it measured (per-channel mean / std)
    params = zero_init_last(params)                      # the connector's RegNet blocks start as identities

A randomly initialised tower hands on features dominated by one component that every clip shares: the
grey background's patches, and the 28 s of padding in BEATs' 30 s window (a demo clip lasts 2 s). The
demo's decoder, trained from scratch for a few hundred steps, then ignores the media. Measured on the
demo's held-out rows (its joint phase alone, 300 steps): the same answers, to the last one, with every
clip's media swapped for another clip's. A pretrained tower, which the recipe freezes, hands on
features spread around zero; calibration gives the demo's random towers that property. It is folded
exactly into their weights, so the model code is unchanged and the checkpoint loads anywhere:

- BEATs (post-LN layers): its output is the last layer's `final_layer_norm`, LN(x) * g + b. Per
  channel c, g_c / s_c and (b_c - m_c) / s_c make it (out - m) / s: zero mean and unit variance over
  the clips' tokens.
- CLIP / SigLIP (pre-LN): the feature is the residual stream after layer `select_layer`, and its
  per-channel mean is subtracted from that layer's fc2 bias. A per-channel scale cannot be folded into
  a residual sum; centring is what the decoder needed (measured: the same accuracy as standardising).

Shapes: video (B, T, 3, H, W) -> tower features (B * T, P, C); fbank (B, F, 128) -> BEATs (B, N, C).
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

import jax
import numpy as np
from flax import traverse_util

VISION_FC2_BIAS = ("vision", "encoder", "layers", "mlp", "fc2", "bias")  # (L, C): stacked layers
BEATS_LAST_NORM = ("audio", "encoder", "layers", "final_layer_norm")  # scale / bias, (L, C)


def feature_layer(num_layers: int, select_layer: int) -> int:
    """The layer whose output is `hidden_states[select_layer]` (hidden_states[0] is the embeddings)."""
    k = select_layer if select_layer >= 0 else num_layers + 1 + select_layer
    if not 1 <= k <= num_layers:
        raise ValueError(f"select_layer {select_layer} of a {num_layers}-layer tower is not a layer's output: "
                         "nothing to calibrate")
    return k - 1


def _path(flat: dict, path: Tuple[str, ...]) -> np.ndarray:
    if path not in flat:
        raise KeyError(f"calibration expects the param {'/'.join(path)}; this model has none")
    return np.asarray(flat[path], np.float64)


def tower_stats(model, params, batches: Iterable[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Per-channel mean of the vision features and mean / std of BEATs' over the clips of `batches`
    (audio only of the rows whose `has_audio` is set)."""
    cfg = model.config
    vision = jax.jit(lambda p, v: model.apply({"params": p}, v.reshape((-1,) + v.shape[2:]),
                                              method=lambda m, x: m.vision.features(x)))
    audio = jax.jit(lambda p, a: model.apply({"params": p}, a, method=lambda m, x: m.audio(x)))
    sums = {"v": 0.0, "v_n": 0, "a": 0.0, "a2": 0.0, "a_n": 0}
    for batch in batches:
        if cfg.vision is not None and batch.get("video") is not None:
            keep = np.asarray(batch.get("has_video", np.ones(len(batch["video"]), bool)), bool)
            if keep.any():
                f = np.asarray(vision(params, batch["video"][keep]), np.float64)
                sums["v"] = sums["v"] + f.reshape(-1, f.shape[-1]).sum(0)
                sums["v_n"] += f.shape[0] * f.shape[1]
        if cfg.audio is not None and batch.get("audio") is not None:
            keep = np.asarray(batch.get("has_audio", np.ones(len(batch["audio"]), bool)), bool)
            if keep.any():
                f = np.asarray(audio(params, batch["audio"][keep]), np.float64).reshape(-1, cfg.audio.encoder_embed_dim)
                sums["a"] = sums["a"] + f.sum(0)
                sums["a2"] = sums["a2"] + (f * f).sum(0)
                sums["a_n"] += f.shape[0]
    stats = {}
    if sums["v_n"]:
        stats["vision_mean"] = sums["v"] / sums["v_n"]
    if sums["a_n"]:
        mean = sums["a"] / sums["a_n"]
        stats["audio_mean"] = mean
        stats["audio_std"] = np.sqrt(np.maximum(sums["a2"] / sums["a_n"] - mean * mean, 0.0))
    return stats


def fold(model_config, params, stats: Dict[str, np.ndarray], eps: float = 1e-6):
    """`params` with `stats` (tower_stats) folded into the towers' last weights (see the module doc)."""
    flat = traverse_util.flatten_dict(jax.device_get(params))
    flat = {k: np.asarray(v) for k, v in flat.items()}
    if "vision_mean" in stats:
        v = model_config.vision
        layer = feature_layer(v.num_layers, v.select_layer)
        bias = _path(flat, VISION_FC2_BIAS).copy()
        bias[layer] -= stats["vision_mean"]
        flat[VISION_FC2_BIAS] = bias.astype(flat[VISION_FC2_BIAS].dtype)
    if "audio_mean" in stats:
        scale_key, bias_key = BEATS_LAST_NORM + ("scale",), BEATS_LAST_NORM + ("bias",)
        scale, bias = _path(flat, scale_key).copy(), _path(flat, bias_key).copy()
        s = np.maximum(stats["audio_std"], eps)
        scale[-1] = scale[-1] / s
        bias[-1] = (bias[-1] - stats["audio_mean"]) / s
        flat[scale_key] = scale.astype(flat[scale_key].dtype)
        flat[bias_key] = bias.astype(flat[bias_key].dtype)
    return traverse_util.unflatten_dict(flat)


def zero_init_last(params):
    """`params` with the last norm's scale of every RegNet block of the connector set to zero, so each
    block starts as its shortcut (timm's RegNet `zero_init_last`, the usual init of residual stacks
    trained from scratch). From a random init the connector's eight blocks otherwise scramble what the
    tower hands on: a linear probe reads which colours a clip shows from the tower's mean feature
    (0.83) but from the connector's only at 0.73, and 700 training steps did not recover it (0.71);
    with the blocks starting as identities, 0.85."""
    flat = traverse_util.flatten_dict(jax.device_get(params))
    keys = [k for k in flat if k[0] == "connector" and k[-3:] == ("conv3", "norm", "scale")]
    for k in keys:
        flat[k] = np.zeros_like(np.asarray(flat[k]))
    return traverse_util.unflatten_dict(flat)


def calibrate_towers(model, params, batches: Iterable[Dict[str, np.ndarray]]):
    """`params` whose towers hand on centred (vision) and standardised (BEATs) features over `batches`."""
    return fold(model.config, params, tower_stats(model, params, batches))
