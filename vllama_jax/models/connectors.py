"""Vision-language connectors (`mm_projector_type`) and the audio projector (`mm_projector_a_type`).

    vision:  x (B, T, N, C_in) frame features, N = h * w patches in row-major order -> (B, tokens, D)
    audio:   x (B, L, C_in) BEATs features -> (B, L, D)

Types (D = `out_dim`, the decoder width):

    stc_connector      per frame RegStage(4, C_in -> D) `s1`; `sampler` Conv3d over (t, h, w) with
                       kernel = stride = (2, 2, 2), padding 1, + SiLU; per frame RegStage(4, D -> D)
                       `s2`; `readout` Linear(D, D), GELU, Linear(D, D). VideoLLaMA 2's default.
    stp_connector      the same with AvgPool3d((2, 2, 2)) + SiLU as the sampler (no params).
    stc_connector_v35  the same with the Conv3d unpadded.
    spatial_conv       Conv3d kernel = stride = (1, 2, 2), padding 1 (time is padded too), no stages.
    spatial_pool       AvgPool3d((1, 2, 2)), no stages.
    mlpNx_gelu         Linear(C_in, D), then (GELU, Linear(D, D)) N - 1 times.
    linear             Linear(C_in, D).
    identity           no params; needs C_in == D.

For `mlpNx_gelu` and `linear`, a (B, T, N, C) input is averaged over frames first (the original does
this in its `temporal_aggregator`); a 3-D input (B, L, C), the audio path, is projected as is.
`identity` flattens frames into tokens, (B, T * N, C): the original has no vision path for it (its
`temporal_aggregator` rejects the type), so that choice is ours; a 3-D input passes unchanged.

The original builds `spatial_conv` / `spatial_pool` at the decoder width only (its sampler and
readout take D channels), so a released checkpoint of those types has C_in == D; here the sampler
(spatial_conv) or the readout (spatial_pool) changes the width when C_in != D.

Token count (see `num_connector_tokens`): each of t, h, w goes through kernel = stride = k with
padding p, `n' = floor((n + 2p - k) / k) + 1`. For 8 frames of 24 x 24 patches (CLIP ViT-L/14-336):

    stc_connector      t' = floor((8 + 2 - 2) / 2) + 1 = 5, h' = w' = floor((24 + 2 - 2) / 2) + 1 = 13: 845
                       (16 frames: 9 * 13 * 13 = 1521)
    stc_connector_v35, stp_connector   4 * 12 * 12 = 576
    spatial_conv       t' = 8 + 2 = 10, 13 * 13: 1690
    spatial_pool       8 * 12 * 12 = 1152
    mlpNx_gelu, linear 576 (= N)
    identity           8 * 576 = 4608

Checkpoint names (`connector_key_map`) are relative to the projector: `s1.b1.conv1.conv.weight`,
`sampler.0.weight`, `readout.0.weight`, `readout.2.weight`; `0.weight`, `2.weight` for mlpNx_gelu;
`weight` for linear. The caller adds `model.mm_projector.` / `model.mm_projector_a.`.
"""
import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from vllama_jax.checkpoints.keymap import KeyMap
from vllama_jax.config import ConfigError, ConnectorConfig, SpatioTemporalSpec
from vllama_jax.layers.linear import Dense, torch_linear_bias_init, torch_linear_kernel_init
from vllama_jax.layers.conv import Conv
from vllama_jax.layers.regstage import RegStage, regstage_key_map

READOUT_DEPTH = 2  # Linear, GELU, Linear after the stages


def _side(n: int, what: str, x_shape) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"connector input {tuple(x_shape)}: {what} {n} is not a square number of patches")
    return side


class MLPProjector(nn.Module):
    """Linear, then (GELU, Linear) `depth - 1` times: `fc1 .. fc{depth}`.

    x (B, T, N, C) is averaged over T first; x (B, L, C) is projected as is. -> (..., features)
    """

    depth: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if x.ndim == 4:
            x = jnp.mean(x, axis=1)
        for i in range(self.depth):
            if i:
                x = nn.gelu(x, approximate=False)  # torch.nn.GELU(): the exact erf form
            # Alternate (embed, mlp) / (mlp, embed) so that tensor parallelism splits each pair of
            # layers column- then row-wise, with no gather between them.
            axes = ("embed", "mlp") if i % 2 == 0 else ("mlp", "embed")
            # Initialised as PyTorch's nn.Linear (the original builds its projectors when training starts,
            # outside transformers' init): at a small width the usual 0.02 std would shrink each layer's output.
            x = Dense(self.features, axes=axes, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                      kernel_init=torch_linear_kernel_init, bias_init=torch_linear_bias_init(x.shape[-1]),
                      name=f"fc{i + 1}")(x)
        return x


class SpatioTemporalConnector(nn.Module):
    """The STC family: stage `s1` per frame, 3-D down-sampling, stage `s2` per frame, MLP readout.

    x (B, T, N, C_in) -> (B, t' * h' * w', features), tokens ordered (t, h, w).
    """

    spec: SpatioTemporalSpec
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(f"connector input {tuple(x.shape)}: expected (B, T, N, C) frame features")
        b, t, n, c = x.shape
        side = _side(n, "N", x.shape)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = self.features
        x = x.astype(self.dtype).reshape(b * t, side, side, c)  # frames folded into the batch
        if self.spec.stage_depth:
            x = RegStage(self.spec.stage_depth, d, name="s1", **kw)(x)
        x = x.reshape(b, t, side, side, x.shape[-1])
        k = self.spec.downsample
        if self.spec.sampler == "conv":
            x = Conv(d, k, strides=k, padding=self.spec.padding, use_bias=True, name="sampler", **kw)(x)
        else:
            x = nn.avg_pool(x, window_shape=k, strides=k, padding="VALID")
        x = nn.silu(x)
        b, t, h, w, c = x.shape  # (t, h, w) down-sampled
        if self.spec.stage_depth:
            x = RegStage(self.spec.stage_depth, d, name="s2", **kw)(x.reshape(b * t, h, w, c))
        x = x.reshape(b, t * h * w, x.shape[-1])
        return MLPProjector(READOUT_DEPTH, d, name="readout", **kw)(x)


class IdentityConnector(nn.Module):
    """No params: (B, T, N, C) -> (B, T * N, C); (B, L, C) unchanged."""

    dtype: Any = jnp.float32

    def __call__(self, x):
        if x.ndim == 4:
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        return x.astype(self.dtype)


# --- the families: module, token count, checkpoint names ---------------------------------------------------

def _stc_tokens(config: ConnectorConfig, num_frames: int, num_patches: int) -> int:
    spec = config.spec
    side = _side(num_patches, "num_patches", (num_frames, num_patches))
    p = spec.padding if spec.sampler == "conv" else 0
    t, h, w = ((n + 2 * p - k) // k + 1 for n, k in zip((num_frames, side, side), spec.downsample))
    return t * h * w


def _mlp_key_map(depth: int, numbered: bool = True) -> KeyMap:
    """torch `nn.Sequential(Linear, GELU, Linear, ...)`: the Linears sit at indices 0, 2, 4, ..."""
    km = KeyMap()
    for i in range(depth):
        name = f"{2 * i}." if numbered else ""
        km.add(f"{name}weight", (f"fc{i + 1}", "kernel"), "linear")
        km.add(f"{name}bias", (f"fc{i + 1}", "bias"))
    return km


def _stc_key_map(config: ConnectorConfig) -> KeyMap:
    spec, km = config.spec, KeyMap()
    if spec.stage_depth:
        km += regstage_key_map(spec.stage_depth, config.in_dim, config.out_dim).with_prefix("s1.", ("s1",))
    if spec.sampler == "conv":
        km.add("sampler.0.weight", ("sampler", "kernel"), "conv")
        km.add("sampler.0.bias", ("sampler", "bias"))
    if spec.stage_depth:
        km += regstage_key_map(spec.stage_depth, config.out_dim, config.out_dim).with_prefix("s2.", ("s2",))
    return km + _mlp_key_map(READOUT_DEPTH).with_prefix("readout.", ("readout",))


def _identity(config: ConnectorConfig, dtype, param_dtype) -> nn.Module:
    if config.in_dim != config.out_dim:
        raise ConfigError(f"identity projector needs in_dim == out_dim, got {config.in_dim} -> {config.out_dim}")
    return IdentityConnector(dtype=dtype)


@dataclasses.dataclass(frozen=True)
class ConnectorFamily:
    build: Callable[[ConnectorConfig, Any, Any], nn.Module]
    tokens: Callable[[ConnectorConfig, int, int], int]  # (config, num_frames, num_patches) -> tokens
    key_map: Callable[[ConnectorConfig], KeyMap]


# `ConnectorConfig.family` -> how to build it, how many tokens it makes, its checkpoint names.
FAMILIES = {
    "spatio_temporal": ConnectorFamily(
        lambda c, dtype, param_dtype: SpatioTemporalConnector(c.spec, c.out_dim, dtype=dtype, param_dtype=param_dtype),
        _stc_tokens, _stc_key_map),
    "mlp": ConnectorFamily(
        lambda c, dtype, param_dtype: MLPProjector(c.mlp_depth, c.out_dim, dtype=dtype, param_dtype=param_dtype),
        lambda c, num_frames, num_patches: num_patches,  # frames are averaged
        lambda c: _mlp_key_map(c.mlp_depth, numbered=c.type != "linear")),
    "identity": ConnectorFamily(_identity, lambda c, num_frames, num_patches: num_frames * num_patches,
                                lambda c: KeyMap()),
}


def build_connector(config: ConnectorConfig, dtype=jnp.float32, param_dtype=jnp.float32) -> nn.Module:
    """The connector module of `config.type`; `module(x)` maps (B, T, N, C_in) (or (B, L, C_in) for the
    MLP types and identity) to (B, tokens, out_dim)."""
    return FAMILIES[config.family].build(config, dtype, param_dtype)


def num_connector_tokens(config: ConnectorConfig, num_frames: int, num_patches: int) -> int:
    """Tokens that `build_connector(config)` makes from `num_frames` frames of `num_patches` patches.

    STC family: each of (t, h, w) with kernel = stride = k and padding p becomes
    floor((n + 2p - k) / k) + 1, and the tokens are t' * h' * w' (845 for stc_connector on 8 frames of
    24 x 24). MLP types average the frames: num_patches. identity: num_frames * num_patches.
    """
    return FAMILIES[config.family].tokens(config, num_frames, num_patches)


def connector_key_map(config: ConnectorConfig) -> KeyMap:
    """Checkpoint names relative to the projector -> our param paths (add the prefix with `with_prefix`)."""
    return FAMILIES[config.family].key_map(config)
