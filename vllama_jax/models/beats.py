"""BEATs (Chen et al., 2022), the audio encoder of VideoLLaMA 2's audio-visual models.

    fbank (B, F, 128) --normalise, 16x16 patches--> (B, T * 8, E) --LayerNorm, Linear--> (B, N, C)
      --+ conv positional embedding, LayerNorm--> L x deep-norm post-LN layers --> (B, N, C)

T = F // 16 time patches, 8 = 128 // 16 frequency patches, ordered time-major (token t * 8 + f);
N = 8 * T tokens (30 s of audio: F = 2998, N = 1496); E = `embed_dim`, C = `encoder_embed_dim`.
The fbank comes in raw (`vllama_jax.audio.fbank`) and is normalised here, (x - 15.41663) / (2 * 6.55582),
as the original's `BEATs.preprocess` does.

The parts, as the original (`model/beats/BEATs.py`, `backbone.py` of VideoLLaMA 2's audio_visual branch):

- positional embedding: a grouped Conv1d over tokens (kernel `conv_pos`, padding conv_pos // 2, an even
  kernel's one extra output frame dropped), GELU, added to its input. Its kernel is weight-normalised,
  `g * v / sqrt(sum(v^2) + 1e-6)` with the sum per kernel tap (over input and output channels; the
  epsilon is the original's `weight_norm_fix.py`). We keep `weight_g` / `weight_v` as params and form
  the kernel in the module, so the params are the checkpoint's one for one and export back unchanged.
- encoder layer (post-LN with DeepNorm's alpha = (2 * layers) ** 0.25 on the residual):
      x = self_attn_layer_norm(alpha * x + self_attn(x))
      x = final_layer_norm(alpha * x + fc2(gelu(fc1(x))))
- attention logits: q.k / sqrt(hd) + gate(q) * rel_bias. `rel_bias` (H, N, N) looks up a table
  (num_buckets, H) by a bucketed key - query offset (exact below num_buckets / 4, log-spaced up to
  `max_distance`, split by sign); the table belongs to layer 0 and every layer uses it. The gate
  (`gru_rel_pos`) is per layer, head and query: from the un-scaled query q (hd,), `grep_linear` gives
  8 numbers; a = sigmoid(sum of the first 4), b = sigmoid(sum of the last 4), gate = a * (b * grep_a - 1) + 2.
  The original scales q by 1/32 before the dot product and subtracts each row's maximum before
  multiplying back by 32 (to keep float16 in range). Neither changes the probabilities (scaling by a
  power of two is exact, and softmax ignores a per-row shift), so the shared `dot_product_attention`
  with an additive `bias` computes the same attention, to float32 rounding. The shared `Attention`
  module is not used because the gate needs the query projection it keeps inside.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vllama_jax.checkpoints.hf_files import StateDict, read_torch_pickle, torch_to_numpy
from vllama_jax.checkpoints.keymap import CheckpointError, KeyMap, to_params
from vllama_jax.config import BEATsConfig, ConfigError
from vllama_jax.layers.attention import dot_product_attention
from vllama_jax.layers.conv import Conv
from vllama_jax.layers.linear import Dense, default_kernel_init
from vllama_jax.layers.norms import LayerNorm
from vllama_jax.layers.remat import remat

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_accurate": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
WEIGHT_NORM_EPS = 1e-6
GATE_PARTS = 8  # grep_linear's outputs: 4 summed into gate a, 4 into gate b


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """(length, length) int32: the table row for query i and key j, from the offset j - i.

    Half of the buckets hold positive offsets. Within a half, offsets below half / 2 get a bucket each;
    larger ones share log-spaced buckets up to `max_distance`, the last bucket taking everything beyond.
    float32 arithmetic, as the original computes it, so the buckets agree at their edges.
    """
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    exact = half // 2
    dist = np.abs(offset)
    ratio = np.maximum(dist, 1).astype(np.float32) / np.float32(exact)  # dist 0 is in the exact range anyway
    log_scaled = np.log(ratio) / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
    large = np.minimum(exact + log_scaled.astype(np.int32), half - 1)
    return ((offset > 0) * half + np.where(dist < exact, dist, large)).astype(np.int32)


class PositionalConv(nn.Module):
    """GELU(weight-normalised grouped Conv1d(x)), the same length as x: (B, N, C) -> (B, N, C).

    Params (Flax conv layout): `weight_v` (K, C / groups, C), `weight_g` (K, 1, 1), `bias` (C,).
    """

    kernel_size: int
    groups: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, c, k = x.shape[1], x.shape[-1], self.kernel_size
        v = self.param("weight_v", nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                 ("conv_k", "conv_in", "conv_out")),
                       (k, c // self.groups, c), self.param_dtype)
        g = self.param("weight_g", nn.with_logical_partitioning(nn.initializers.ones, ("conv_k", None, None)),
                       (k, 1, 1), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), (c,),
                          self.param_dtype)
        v32 = v.astype(jnp.float32)
        kernel = g * v32 * jax.lax.rsqrt(jnp.sum(v32 * v32, axis=(1, 2), keepdims=True) + WEIGHT_NORM_EPS)
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(1,),
                                         padding=[(k // 2, k // 2)], dimension_numbers=("NWC", "WIO", "NWC"),
                                         feature_group_count=self.groups)
        y = y[:, :n] + bias.astype(self.dtype)  # an even kernel yields n + 1 frames: drop the last
        return jax.nn.gelu(y, approximate=False)


class BEATsAttention(nn.Module):
    """Self-attention with the shared relative position bias, gated per query (`gru_rel_pos`).

    x (B, N, C), rel_bias (1, H, N, N) or None -> (B, N, C). Params: `q_proj`, `k_proj`, `v_proj`,
    `out_proj` (biased), `grep_linear` (hd -> 8), `grep_a` (1, H, 1, 1).
    """

    num_heads: int
    gated: bool
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, rel_bias):
        b, n, c = x.shape
        h, hd = self.num_heads, c // self.num_heads
        dense = lambda f, axes, name: Dense(f, axes, True, self.dtype, self.param_dtype, name=name)
        q = dense(c, ("embed", "heads"), "q_proj")(x).reshape(b, n, h, hd)
        k = dense(c, ("embed", "kv"), "k_proj")(x).reshape(b, n, h, hd)
        v = dense(c, ("embed", "kv"), "v_proj")(x).reshape(b, n, h, hd)
        bias = None
        if rel_bias is not None:
            bias = rel_bias
            if self.gated:
                parts = dense(GATE_PARTS, ("head_dim", None), "grep_linear")(q)  # (B, N, H, 8)
                gate_a, gate_b = jnp.split(jax.nn.sigmoid(parts.reshape(b, n, h, 2, 4).sum(-1)), 2, axis=-1)
                grep_a = self.param("grep_a", nn.with_logical_partitioning(nn.initializers.ones,
                                                                           (None, None, None, None)),
                                    (1, h, 1, 1), self.param_dtype)
                gate = gate_a[..., 0] * (gate_b[..., 0] * grep_a.reshape(h).astype(self.dtype) - 1.0) + 2.0
                bias = jnp.transpose(gate, (0, 2, 1))[..., None] * rel_bias  # (B, H, N, 1) * (1, H, N, N)
        out = dot_product_attention(q, k, v, bias=bias).reshape(b, n, c)
        return dense(c, ("heads", "embed"), "out_proj")(out)


class BEATsLayer(nn.Module):
    """Post-LN transformer layer with DeepNorm residual scaling: (B, N, C) -> (B, N, C)."""

    config: BEATsConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, rel_bias):
        cfg = self.config
        alpha = (2.0 * cfg.encoder_layers) ** 0.25 if cfg.deep_norm else 1.0
        norm = lambda name: LayerNorm(cfg.layer_norm_eps, self.dtype, self.param_dtype, name=name)
        dense = lambda f, axes, name: Dense(f, axes, True, self.dtype, self.param_dtype, name=name)
        attn = BEATsAttention(cfg.encoder_attention_heads, cfg.gru_rel_pos, self.dtype, self.param_dtype,
                              name="self_attn")
        x = norm("self_attn_layer_norm")(x * alpha + attn(x, rel_bias))
        h = ACTIVATIONS[cfg.activation_fn](dense(cfg.encoder_ffn_embed_dim, ("embed", "mlp"), "fc1")(x))
        return norm("final_layer_norm")(x * alpha + dense(x.shape[-1], ("mlp", "embed"), "fc2")(h))


class BEATsEncoder(nn.Module):
    """Positional conv, LayerNorm, then the layers (scanned: params stacked on a leading `layers` axis).

    (B, N, C) -> (B, N, C). Params: `pos_conv`, `layer_norm`, `relative_attention_bias` (num_buckets, H)
    (the shared table), `layers/...`. `remat_policy`: layers/remat.py (training the tower keeps each
    layer's (B, H, N, N) attention tensors otherwise: ~1.3 GiB a layer for 30 s of audio).
    """

    config: BEATsConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = x + PositionalConv(cfg.conv_pos, cfg.conv_pos_groups, self.dtype, self.param_dtype, name="pos_conv")(x)
        x = LayerNorm(cfg.layer_norm_eps, self.dtype, self.param_dtype, name="layer_norm")(x)

        rel_bias = None
        if cfg.relative_position_embedding:
            table = self.param("relative_attention_bias",
                               nn.with_logical_partitioning(default_kernel_init, (None, None)),
                               (cfg.num_buckets, cfg.encoder_attention_heads), self.param_dtype)
            buckets = relative_position_buckets(x.shape[1], cfg.num_buckets, cfg.max_distance)
            rel_bias = jnp.transpose(table.astype(jnp.float32)[buckets], (2, 0, 1))[None]  # (1, H, N, N)

        stack = nn.scan(lambda layer, h, bias: (layer(h, bias), None), variable_axes={"params": 0},
                        split_rngs={"params": True}, in_axes=nn.broadcast, length=cfg.encoder_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        layer = remat(BEATsLayer, self.remat_policy)
        x, _ = stack(layer(cfg, self.dtype, self.param_dtype, name="layers"), x, rel_bias)
        return x


def _check_config(config: BEATsConfig):
    if config.layer_norm_first:
        raise ConfigError("BEATs with layer_norm_first=True (pre-LN) is not supported; released BEATs are post-LN")
    if config.activation_fn not in ACTIVATIONS:
        raise ConfigError(f"BEATs activation_fn '{config.activation_fn}' is not supported ({', '.join(ACTIVATIONS)})")
    if config.encoder_embed_dim % config.encoder_attention_heads:
        raise ConfigError(f"BEATs encoder_embed_dim {config.encoder_embed_dim} is not a multiple of "
                          f"encoder_attention_heads {config.encoder_attention_heads}")


class BEATs(nn.Module):
    """fbank (B, F, 128) raw Kaldi filterbank -> (B, (F // 16) * 8, encoder_embed_dim) features."""

    config: BEATsConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"  # for training: see BEATsEncoder

    @nn.compact
    def __call__(self, fbank):
        cfg = self.config
        _check_config(cfg)
        p = cfg.input_patch_size
        if fbank.ndim != 3 or fbank.shape[1] < p or fbank.shape[2] % p:
            raise ValueError(f"BEATs takes an fbank (B, frames >= {p}, bins divisible by {p}), got {fbank.shape}")
        x = (fbank.astype(jnp.float32) - cfg.fbank_mean) / (2 * cfg.fbank_std)
        x = Conv(cfg.embed_dim, (p, p), strides=p, use_bias=cfg.conv_bias, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="patch_embedding")(x[..., None].astype(self.dtype))
        x = x.reshape(x.shape[0], -1, cfg.embed_dim)  # (B, T, 8, E) -> (B, T * 8, E): time-major, as torch
        x = LayerNorm(cfg.layer_norm_eps, self.dtype, self.param_dtype, name="layer_norm")(x)
        if cfg.embed_dim != cfg.encoder_embed_dim:
            x = Dense(cfg.encoder_embed_dim, (None, "embed"), True, self.dtype, self.param_dtype,
                      name="post_extract_proj")(x)
        return BEATsEncoder(cfg, self.dtype, self.param_dtype, self.remat_policy, name="encoder")(x)


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------

TABLE_KEY = "encoder.layers.{}.self_attn.relative_attention_bias.weight"
# The AudioSet classifier head of fine-tuned BEATs: in the released .pt, unused by VideoLLaMA 2.
UNUSED_PREFIXES = ("predictor.",)


def hf_key_map(config: BEATsConfig, prefix: str = "") -> KeyMap:
    """Original names (`patch_embedding.weight`, `encoder.layers.{i}.self_attn.q_proj.weight`, ...) ->
    our params. The layers share one relative-position table, which a torch state dict names once per
    layer (`encoder.layers.{i}.self_attn.relative_attention_bias.weight`): tied entries, so loading
    takes any of them (all present must be equal) and export writes each, as the original does."""
    km = KeyMap().ignore(*UNUSED_PREFIXES)
    km.add("patch_embedding.weight", ("patch_embedding", "kernel"), "conv")
    if config.conv_bias:
        km.add("patch_embedding.bias", ("patch_embedding", "bias"))
    km.add("layer_norm.weight", ("layer_norm", "scale")).add("layer_norm.bias", ("layer_norm", "bias"))
    if config.embed_dim != config.encoder_embed_dim:
        km.add("post_extract_proj.weight", ("post_extract_proj", "kernel"), "linear")
        km.add("post_extract_proj.bias", ("post_extract_proj", "bias"))
    enc = ("encoder",)
    km.add("encoder.pos_conv.0.weight_v", enc + ("pos_conv", "weight_v"), "conv")
    km.add("encoder.pos_conv.0.weight_g", enc + ("pos_conv", "weight_g"), "conv")
    km.add("encoder.pos_conv.0.bias", enc + ("pos_conv", "bias"))
    km.add("encoder.layer_norm.weight", enc + ("layer_norm", "scale"))
    km.add("encoder.layer_norm.bias", enc + ("layer_norm", "bias"))
    if config.relative_position_embedding:
        for i in range(config.encoder_layers):
            km.add(TABLE_KEY.format(i), enc + ("relative_attention_bias",))

    linears = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"]
    if config.gru_rel_pos and config.relative_position_embedding:
        linears.append("self_attn.grep_linear")
    layers = enc + ("layers",)
    for i in range(config.encoder_layers):
        hf = f"encoder.layers.{i}."
        for name in linears:
            sub = tuple(name.split("."))
            km.add(f"{hf}{name}.weight", layers + sub + ("kernel",), "linear", layer=i)
            km.add(f"{hf}{name}.bias", layers + sub + ("bias",), layer=i)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            km.add(f"{hf}{norm}.weight", layers + (norm, "scale"), layer=i)
            km.add(f"{hf}{norm}.bias", layers + (norm, "bias"), layer=i)
        if config.gru_rel_pos and config.relative_position_embedding:
            km.add(f"{hf}self_attn.grep_a", layers + ("self_attn", "grep_a"), layer=i)
    return km.with_prefix(prefix) if prefix else km


def abstract_params(config: BEATsConfig) -> dict:
    """Our param tree of shapes (jax.ShapeDtypeStruct), without computing anything."""
    p = config.input_patch_size
    shapes = jax.eval_shape(BEATs(config).init, jax.random.PRNGKey(0), jnp.zeros((1, p, 128), jnp.float32))
    return nn.unbox(shapes)["params"]


def beats_params_from_state_dict(state_dict: Mapping[str, np.ndarray], config: BEATsConfig,
                                 source: str = "BEATs checkpoint") -> dict:
    """Original BEATs names (no `model.audio_tower.` prefix) -> our params; errors name `source`."""
    _check_config(config)
    return to_params(state_dict, hf_key_map(config), abstract_params(config), source=source)


def read_beats_pt(path: str):
    """A BEATs `.pt` (a torch pickle `{"cfg": dict, "model": state_dict}`; needs torch) -> (config, state dict)."""
    ckpt = read_torch_pickle(path)
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model"), Mapping)):
        raise CheckpointError(f"{path}: not a BEATs checkpoint (expected a dict with 'cfg' and 'model')")
    config = BEATsConfig.from_hf_config(dict(ckpt.get("cfg") or {}))
    return config, StateDict.from_file(path, {k: torch_to_numpy(v) for k, v in ckpt["model"].items()})


def load_beats(path: str) -> Tuple[BEATsConfig, dict]:
    """A BEATs `.pt` -> (config, params)."""
    config, state_dict = read_beats_pt(path)
    return config, beats_params_from_state_dict(state_dict, config, path)
