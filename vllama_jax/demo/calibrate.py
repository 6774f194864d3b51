"""The demo's init: its frozen random towers calibrated to features that vary around zero (data-dependent),
its connector's RegNet blocks started as their shortcuts, and its connector's linear maps fed
standardised inputs.

    params = calibrate_towers(model, params, batches)   # model: VideoLLaMA2; batches: the train code's dicts
    stats = tower_stats(model, params, batches)          # what it measured (per-channel mean / std)
    params = zero_init_last(params)                      # the connector's RegNet blocks start as identities
    params = standardise_connector(model, params, batches)  # its sampler / readout see (x - mean) / std

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

The connector, once its blocks start as shortcuts, is quiet in another way: each RegNet stage is then
SiLU applied four times to its shortcut (a 1x1 conv and a norm), so what the STC's sampler and readout
read varies between clips by about 0.1 % of its size (measured on the demo's init). They start
reading a constant, and the STC connector learned the demo's objects slowly (docs/demo_findings.md,
"The STC starts mute"). `standardise_connector` scales and shifts the inputs of the connector's linear maps, the
sampler (Conv3d) and the readout's first Linear (and the mean-pooling projector's fc1, so that the
baseline gets the same treatment), to zero mean and unit variance per channel over the calibration
clips, folded into their kernels and biases (LSUV-style data-dependent init: W' = W / s, b' = b -
(m / s) W). One caveat: the sampler's zero padding is then read as -m / s, not as the mean; an init
choice, not a change of the model.

Shapes: video (B, T, 3, H, W) -> tower features (B * T, P, C); fbank (B, F, 128) -> BEATs (B, N, C);
connector inputs: sampler (B, T, h, w, C), readout (B, tokens, D), mean-pool fc1 (B, P, C).
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

VISION_FC2_BIAS = ("vision", "encoder", "layers", "mlp", "fc2", "bias")  # (L, C): stacked layers
BEATS_LAST_NORM = ("audio", "encoder", "layers", "final_layer_norm")  # scale / bias, (L, C)
# The connector's linear maps whose inputs are standardised, in the order the forward pass reaches them
# (each is measured after those before it are folded); a connector has some of them: the STC family
# `sampler` and `readout/fc1`, the mlpNx_gelu projector `fc1`.
CONNECTOR_INPUTS = (("connector", "sampler"), ("connector", "readout", "fc1"), ("connector", "fc1"))


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


class _Moments:
    """Per-channel running mean and standard deviation, in float64, of arrays (..., C)."""

    def __init__(self):
        self.sum, self.sum2, self.n = 0.0, 0.0, 0

    def add(self, x) -> None:
        x = np.asarray(x, np.float64)
        x = x.reshape(-1, x.shape[-1])
        self.sum, self.sum2, self.n = self.sum + x.sum(0), self.sum2 + (x * x).sum(0), self.n + x.shape[0]

    def mean(self) -> np.ndarray:
        return self.sum / self.n

    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.sum2 / self.n - self.mean() ** 2, 0.0))


def _rows_with(batch: Dict[str, np.ndarray], kind: str):
    """batch[kind] ("video" / "audio") of the rows whose `has_<kind>` flag is set (every row when the batch
    has no flags), or None when there are none."""
    x = batch.get(kind)
    if x is None:
        return None
    keep = np.asarray(batch.get(f"has_{kind}", np.ones(len(x), bool)), bool)
    return x[keep] if keep.any() else None


def tower_stats(model, params, batches: Iterable[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Per-channel mean of the vision features and mean / std of BEATs' over the clips of `batches`
    (audio only of the rows whose `has_audio` is set)."""
    cfg = model.config
    vision = jax.jit(lambda p, v: model.apply({"params": p}, v.reshape((-1,) + v.shape[2:]),
                                              method=lambda m, x: m.vision.features(x)))
    audio = jax.jit(lambda p, a: model.apply({"params": p}, a, method=lambda m, x: m.audio(x)))
    v, a = _Moments(), _Moments()
    for batch in batches:
        video_rows = _rows_with(batch, "video") if cfg.vision is not None else None
        if video_rows is not None:
            v.add(vision(params, video_rows))
        audio_rows = _rows_with(batch, "audio") if cfg.audio is not None else None
        if audio_rows is not None:
            a.add(audio(params, audio_rows))
    stats = {}
    if v.n:
        stats["vision_mean"] = v.mean()
    if a.n:
        stats["audio_mean"], stats["audio_std"] = a.mean(), a.std()
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


def connector_input_stats(model, params, batches: Iterable[Dict[str, np.ndarray]], path: Tuple[str, ...]
                          ) -> Dict[str, np.ndarray]:
    """Per-channel mean / std of what the layer at `path` (a connector's Conv or Dense) reads, over every
    position of the video rows of `batches`."""
    def run(p, video):
        seen = {}

        def record(next_fun, args, kwargs, context):
            if context.method_name == "__call__" and tuple(context.module.path) == path:
                seen["x"] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            model.apply({"params": p}, video, method=lambda m, v: m.encode_video(v))
        return seen["x"]

    run = jax.jit(run)
    moments = _Moments()
    for batch in batches:
        video_rows = _rows_with(batch, "video")
        if video_rows is not None:
            moments.add(run(params, video_rows))
    if not moments.n:
        raise ValueError("no video rows to standardise the connector on")
    return {"mean": moments.mean(), "std": moments.std()}


def standardise_connector(model, params, batches: Iterable[Dict[str, np.ndarray]], eps: float = 1e-6):
    """`params` whose connector's sampler and readout (or mean-pooling fc1) read zero-mean, unit-variance
    inputs over the video rows of `batches` (see the module doc); nothing else changes."""
    batches = list(batches)
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params)).items()}
    for path in CONNECTOR_INPUTS:
        if path + ("kernel",) not in flat:
            continue
        stats = connector_input_stats(model, traverse_util.unflatten_dict(flat), batches, path)
        kernel = np.asarray(flat[path + ("kernel",)], np.float64)  # (..., in, out)
        folded = kernel / np.maximum(stats["std"], eps)[:, None]
        bias = np.asarray(flat[path + ("bias",)], np.float64)
        bias = bias - (folded * stats["mean"][:, None]).reshape(-1, folded.shape[-1]).sum(0)  # every tap reads m
        flat[path + ("kernel",)] = folded.astype(flat[path + ("kernel",)].dtype)
        flat[path + ("bias",)] = bias.astype(flat[path + ("bias",)].dtype)
    return traverse_util.unflatten_dict(flat)
