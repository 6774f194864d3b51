"""The vision transformer parts shared by the CLIP and SigLIP towers: patch embedding, pre-LN encoder
layer, and the layer stack scanned over a leading `layers` axis.

    pixels (N, H, W, 3) --PatchEmbedding--> (N, tokens, C)    tokens = (H/p)*(W/p) [+ 1 class token]
    (N, tokens, C) --Encoder (L x EncoderLayer)--> (N, tokens, C)

One encoder layer (HF `CLIPEncoderLayer` / `SiglipEncoderLayer`, identical but for the activation):

    x = x + self_attn(layer_norm1(x))            bidirectional, biased q/k/v/out projections
    x = x + mlp.fc2(act(mlp.fc1(layer_norm2(x))))

Params of the stack carry a leading axis of size L (logical name `layers`): `encoder/layers/...`;
`encoder_key_map` names every slice of them after the HF keys `encoder.layers.{i}.*`.
"""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vllama_jax.checkpoints.keymap import KeyMap
from vllama_jax.layers.attention import Attention
from vllama_jax.layers.linear import Dense, default_kernel_init
from vllama_jax.layers.norms import LayerNorm
from vllama_jax.layers.conv import Conv


# Logical axes of the (N, tokens, C) activations between layers, as the decoder names its own.
ACTIVATION_AXES = ("batch", "length", "act_embed")


def quick_gelu(x):
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * jax.nn.sigmoid(1.702 * x)


# HF `hidden_act` names -> functions. `gelu_pytorch_tanh` (SigLIP) is the tanh approximation.
ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"vision tower hidden_act '{name}' is not supported ({', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


class PatchEmbedding(nn.Module):
    """Non-overlapping p x p patches -> C channels, [class token,] + learned position embeddings.

    pixels (N, H, W, 3) channels-last -> (N, tokens, C). Params: `patch_embedding/kernel` (p, p, 3, C)
    (+ `bias` for SigLIP), `class_embedding` (C,) (CLIP), `position_embedding` (tokens, C).
    """

    hidden_size: int
    patch_size: int
    num_positions: int
    class_token: bool
    patch_bias: bool
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixels):
        p = self.patch_size
        x = Conv(self.hidden_size, (p, p), strides=p, use_bias=self.patch_bias, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="patch_embedding")(pixels)
        n = x.shape[0]
        x = x.reshape(n, -1, self.hidden_size)  # row-major over the patch grid, as torch's flatten(2)
        if self.class_token:
            cls = self.param("class_embedding", nn.with_logical_partitioning(default_kernel_init, ("embed",)),
                             (self.hidden_size,), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, self.hidden_size)), x], axis=1)
        if x.shape[1] != self.num_positions:
            raise ValueError(f"{x.shape[1]} tokens from pixels of shape {pixels.shape} (patch {p}); the position "
                             f"table has {self.num_positions}: the image size does not match the tower's")
        pos = self.param("position_embedding", nn.with_logical_partitioning(default_kernel_init, (None, "embed")),
                         (self.num_positions, self.hidden_size), self.param_dtype)
        return x + pos.astype(self.dtype)[None]


class MLP(nn.Module):
    """fc1 -> act -> fc2: (..., C) -> (..., F) -> (..., C)."""

    hidden: int
    act: str
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = Dense(self.hidden, ("embed", "mlp"), True, self.dtype, self.param_dtype, name="fc1")(x)
        h = activation(self.act)(h)
        return Dense(x.shape[-1], ("mlp", "embed"), True, self.dtype, self.param_dtype, name="fc2")(h)


class EncoderLayer(nn.Module):
    """One pre-LN transformer layer: (N, tokens, C) -> (N, tokens, C)."""

    num_heads: int
    intermediate_size: int
    act: str
    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        norm = lambda name: LayerNorm(self.eps, self.dtype, self.param_dtype, name=name)
        attn = Attention(self.num_heads, self.num_heads, c // self.num_heads, qkv_bias=True, out_bias=True,
                         dtype=self.dtype, param_dtype=self.param_dtype, name="self_attn")
        x = x + attn(norm("layer_norm1")(x))[0]
        mlp = MLP(self.intermediate_size, self.act, self.dtype, self.param_dtype, name="mlp")
        return nn.with_logical_constraint(x + mlp(norm("layer_norm2")(x)), ACTIVATION_AXES)


class Encoder(nn.Module):
    """`num_layers` EncoderLayers, scanned: params stacked on a leading `layers` axis.

    `__call__(x, num_layers=k)` runs only the first k layers (VideoLLaMA 2 reads the second-to-last
    hidden state, so the last layer would be wasted work). Returns `(out (N, tokens, C), hidden)`;
    `hidden` (k+1, N, tokens, C) is the input followed by every layer's output when
    `output_hidden_states`, else None.
    """

    num_layers: int
    num_heads: int
    intermediate_size: int
    act: str
    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, num_layers: Optional[int] = None,
                 output_hidden_states: bool = False) -> Tuple[jax.Array, Optional[jax.Array]]:
        k = self.num_layers if num_layers is None or self.is_initializing() else num_layers
        if not 0 <= k <= self.num_layers:
            raise ValueError(f"num_layers={num_layers}: the encoder has {self.num_layers} layers")

        def body(layer, h, _):
            h = layer(h)
            return h, (h if output_hidden_states else None)

        stack = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True}, length=k,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        if k < self.num_layers:
            # The scan sees only the first k slices of the stacked params.
            stack = nn.map_variables(stack, "params", trans_in_fn=lambda v: jax.tree.map(lambda a: a[:k], v))
        layer = EncoderLayer(self.num_heads, self.intermediate_size, self.act, self.eps, self.dtype,
                             self.param_dtype, name="layers")
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        out, hidden = stack(layer, x, None)
        if output_hidden_states:
            hidden = jnp.concatenate([x[None], hidden], axis=0)
        return out, hidden


def layers_for_select(config) -> int:
    """How many encoder layers produce `hidden_states[config.select_layer]` (index 0 = the embeddings,
    negative indices count from the end of the L + 1 hidden states, as in Python)."""
    s, n = config.select_layer, config.num_layers
    if not -(n + 1) <= s <= n:
        raise ValueError(f"select_layer {s} is out of range for a tower of {n} layers ({n + 1} hidden states)")
    return s if s >= 0 else n + 1 + s


def encoder_key_map(num_layers: int, hf_prefix: str, path: Tuple[str, ...]) -> KeyMap:
    """HF `{hf_prefix}layers.{i}.*` -> slice i of our stacked `{path}/layers/*` params."""
    linears = [(f"self_attn.{n}_proj", ("self_attn", f"{n}_proj")) for n in "qkv"]
    linears += [("self_attn.out_proj", ("self_attn", "o_proj")),  # our Attention calls it o_proj
                ("mlp.fc1", ("mlp", "fc1")), ("mlp.fc2", ("mlp", "fc2"))]
    ours = path + ("layers",)
    km = KeyMap()
    for i in range(num_layers):
        hf = f"{hf_prefix}layers.{i}."
        for hf_name, sub in linears:
            km.add(f"{hf}{hf_name}.weight", ours + sub + ("kernel",), "linear", layer=i)
            km.add(f"{hf}{hf_name}.bias", ours + sub + ("bias",), layer=i)
        for norm in ("layer_norm1", "layer_norm2"):
            km.add(f"{hf}{norm}.weight", ours + (norm, "scale"), layer=i)
            km.add(f"{hf}{norm}.bias", ours + (norm, "bias"), layer=i)
    return km
