"""RegNet stage (timm's `RegStage`, as the STC connector builds it), channels-last.

    x (B, H, W, C_in) -> (B, H, W, C_out)        stride 1: the spatial size is kept

A stage is `depth` bottleneck blocks `b1 .. bN`. The STC connector builds it as
`RegStage(depth=4, in_chs, out_chs, stride=1, dilation=1, act_layer=SiLU, norm_layer=LayerNorm2d)`
with timm's block defaults (bottle_ratio 1, group_size 1, se_ratio 0.25, downsample 'conv1x1'), so
one block is:

    conv1       1x1 conv C_in -> C_out, norm, SiLU
    conv2       3x3 depthwise conv (group width 1), padding 1, norm, SiLU
    se          squeeze-excite: mean over (H, W) -> 1x1 conv to round(C_in / 4) -> SiLU -> 1x1 conv
                back to C_out -> sigmoid, multiplied into x. The reduction counts the block's INPUT
                channels, as timm does, so b1 of a 32 -> 64 stage squeezes to 8 and b2 to 16.
    conv3       1x1 conv, norm (no activation)
    downsample  shortcut projection, 1x1 conv + norm, only where C_in != C_out (b1); else identity
    out         SiLU(conv3 + shortcut)

The convs have no bias. The norm is a LayerNorm over channels with eps 1e-5: timm turns
`LayerNorm2d` into `LayerNormAct2d`, whose default eps is 1e-5 (not LayerNorm2d's 1e-6).

Param names follow timm's (`b1/conv1/conv/kernel`, `b1/conv1/norm/scale`, `b1/se/fc1/kernel`, ...);
`regstage_key_map` gives the checkpoint name of each.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vllama_jax.checkpoints.keymap import KeyMap
from vllama_jax.layers.conv import Conv
from vllama_jax.layers.norms import LayerNorm

NORM_EPS = 1e-5
SE_RATIO = 0.25


def se_channels(in_chs: int) -> int:
    # Python's round, as timm's `int(round(in_chs * se_ratio))`.
    return int(round(in_chs * SE_RATIO))


class ConvNorm(nn.Module):
    """Conv (no bias) + LayerNorm over channels + optional SiLU: timm's `ConvNormAct`."""

    features: int
    kernel: int = 1
    groups: int = 1
    act: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel
        x = Conv(self.features, (k, k), padding=k // 2, groups=self.groups, name="conv", dtype=self.dtype,
                 param_dtype=self.param_dtype)(x)
        x = LayerNorm(eps=NORM_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
        return nn.silu(x) if self.act else x


class SqueezeExcite(nn.Module):
    """Channel gate from the spatial mean: (B, H, W, C) -> (B, H, W, C). timm's `SEModule`."""

    reduced: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.silu(Conv(self.reduced, (1, 1), name="fc1", **kw)(s))
        s = Conv(x.shape[-1], (1, 1), name="fc2", **kw)(s)
        return x * nn.sigmoid(s)


class Bottleneck(nn.Module):
    """One RegNet bottleneck block: (B, H, W, C_in) -> (B, H, W, features)."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c_in, c = x.shape[-1], self.features
        shortcut = x
        x = ConvNorm(c, kernel=1, name="conv1", **kw)(x)
        x = ConvNorm(c, kernel=3, groups=c, name="conv2", **kw)(x)
        x = SqueezeExcite(se_channels(c_in), name="se", **kw)(x)
        x = ConvNorm(c, kernel=1, act=False, name="conv3", **kw)(x)
        if c_in != c:
            shortcut = ConvNorm(c, kernel=1, act=False, name="downsample", **kw)(shortcut)
        return nn.silu(x + shortcut)


class RegStage(nn.Module):
    """`depth` bottleneck blocks `b1 .. b{depth}`: (B, H, W, C_in) -> (B, H, W, features)."""

    depth: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = Bottleneck(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name=f"b{i + 1}")(x)
        return x


def regstage_key_map(depth: int, in_chs: int, out_chs: int) -> KeyMap:
    """Checkpoint names relative to the stage (`b1.conv1.conv.weight`, ...) -> our param paths."""
    km = KeyMap()
    for i in range(depth):
        b = f"b{i + 1}"
        parts = ["conv1", "conv2", "conv3"] + (["downsample"] if i == 0 and in_chs != out_chs else [])
        for part in parts:
            km.add(f"{b}.{part}.conv.weight", (b, part, "conv", "kernel"), "conv")
            km.add(f"{b}.{part}.bn.weight", (b, part, "norm", "scale"))
            km.add(f"{b}.{part}.bn.bias", (b, part, "norm", "bias"))
        for fc in ("fc1", "fc2"):
            km.add(f"{b}.se.{fc}.weight", (b, "se", fc, "kernel"), "conv")
            km.add(f"{b}.se.{fc}.bias", (b, "se", fc, "bias"))
    return km
