"""SigLIP vision tower (VideoLLaMA 2.1's `google/siglip-so400m-patch14-384`), as HF's `SiglipVisionModel`.

    pixel_values (N, 3, H, W) -> patches (N, P, C) (no class token, biased patch conv) -> L encoder layers
        -> post_layernorm -> last_hidden_state (N, P, C)          P = (H / p) * (W / p)

Unlike CLIP there is no norm before the encoder, and the final norm is applied to every token.
VideoLLaMA 2.1 takes `hidden_states[select_layer]` (before that final norm): `features()` -> (N, P, C).

HF's attention-pooling head (`vision_model.head.*`) gives one vector per image, which VideoLLaMA 2
never uses: it is not built here; the key map lists its tensors as `unused` (read, checked for shape,
set aside, written back on export: the original's checkpoints carry them).

Params: `embeddings/{patch_embedding, position_embedding}`, `encoder/layers/*` (stacked, see
layers/vit.py), `post_layernorm`.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vllama_jax.checkpoints.keymap import KeyMap
from vllama_jax.config import VisionConfig
from vllama_jax.layers.norms import LayerNorm
from vllama_jax.layers.vit import Encoder, PatchEmbedding, encoder_key_map, layers_for_select

# A buffer (not a weight) that older transformers saved.
IGNORED_KEYS = ("embeddings.position_ids",)


class SiglipVisionTower(nn.Module):
    config: VisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embeddings = PatchEmbedding(c.hidden_size, c.patch_size, c.num_positions, class_token=False,
                                         patch_bias=True, **kw)
        self.encoder = Encoder(c.num_layers, c.num_heads, c.intermediate_size, c.hidden_act, c.layer_norm_eps, **kw)
        self.post_layernorm = LayerNorm(c.layer_norm_eps, **kw)

    def _encode(self, pixel_values, num_layers, output_hidden_states):
        x = self.embeddings(jnp.transpose(pixel_values, (0, 2, 3, 1)))
        return self.encoder(x, num_layers=num_layers, output_hidden_states=output_hidden_states)

    def __call__(self, pixel_values, *, output_hidden_states=False, num_layers=None):
        """pixel_values (N, 3, H, W). `num_layers`: run only the first k encoder layers (the outputs are
        then those of a k-layer tower). Returns {"last_hidden_state" (N, P, C), and with
        `output_hidden_states` "hidden_states" (k + 1, N, P, C), the embeddings first}."""
        x, hidden = self._encode(pixel_values, num_layers, output_hidden_states)
        out = {"last_hidden_state": self.post_layernorm(x)}
        if output_hidden_states:
            out["hidden_states"] = hidden
        return out

    def features(self, pixel_values):
        """What VideoLLaMA 2.1 passes to its connector: hidden_states[select_layer] (N, P, C)."""
        if self.config.select_feature != "patch":
            raise ValueError(f"SigLIP select_feature '{self.config.select_feature}' is not 'patch'")
        x = self._encode(pixel_values, layers_for_select(self.config), False)[0]
        if self.is_initializing():  # create post_layernorm too: the params mirror HF's SiglipVisionModel
            self.post_layernorm(x)
        return x


def hf_key_map(config: VisionConfig, prefix: str = "vision_model.") -> KeyMap:
    """HF `SiglipVisionModel` names under `prefix` -> our params; the pooling head (`{prefix}head.*`,
    HF's `SiglipMultiheadAttentionPoolingHead`) as unused tensors of their shapes."""
    km = KeyMap().ignore(*(prefix + k for k in IGNORED_KEYS))
    if config.pooling_head:
        c, i = config.hidden_size, config.intermediate_size
        for name, shape in (("probe", (1, 1, c)), ("attention.in_proj_weight", (3 * c, c)),
                            ("attention.in_proj_bias", (3 * c,)), ("attention.out_proj.weight", (c, c)),
                            ("attention.out_proj.bias", (c,)), ("layernorm.weight", (c,)), ("layernorm.bias", (c,)),
                            ("mlp.fc1.weight", (i, c)), ("mlp.fc1.bias", (i,)), ("mlp.fc2.weight", (c, i)),
                            ("mlp.fc2.bias", (c,))):
            km.add_unused(f"{prefix}head.{name}", shape)
    km.add(f"{prefix}embeddings.patch_embedding.weight", ("embeddings", "patch_embedding", "kernel"), "conv")
    km.add(f"{prefix}embeddings.patch_embedding.bias", ("embeddings", "patch_embedding", "bias"))
    km.add(f"{prefix}embeddings.position_embedding.weight", ("embeddings", "position_embedding"))
    km.add(f"{prefix}post_layernorm.weight", ("post_layernorm", "scale"))
    km.add(f"{prefix}post_layernorm.bias", ("post_layernorm", "bias"))
    return km + encoder_key_map(config.num_layers, f"{prefix}encoder.", ("encoder",))
