"""CLIP vision tower (VideoLLaMA 2's `openai/clip-vit-large-patch14-336`), as HF's `CLIPVisionModel`.

    pixel_values (N, 3, H, W) -> patches + class token (N, 1 + P, C) -> pre_layrnorm -> L encoder layers
        -> last_hidden_state (N, 1 + P, C)       P = (H / p) * (W / p); no final norm on the tokens
        -> pooler_output (N, C)                  post_layernorm of the class token

VideoLLaMA 2 takes `hidden_states[select_layer]` (default -2: the input of the last layer) without the
class token: `features()` -> (N, P, C), running only the layers it needs.

Params: `embeddings/{patch_embedding, class_embedding, position_embedding}`, `pre_layernorm`,
`encoder/layers/*` (stacked, see layers/vit.py), `post_layernorm`.
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


class CLIPVisionTower(nn.Module):
    config: VisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embeddings = PatchEmbedding(c.hidden_size, c.patch_size, c.num_positions, class_token=True,
                                         patch_bias=False, **kw)
        self.pre_layernorm = LayerNorm(c.layer_norm_eps, **kw)
        self.encoder = Encoder(c.num_layers, c.num_heads, c.intermediate_size, c.hidden_act, c.layer_norm_eps, **kw)
        self.post_layernorm = LayerNorm(c.layer_norm_eps, **kw)

    def __call__(self, pixel_values, *, output_hidden_states=False, num_layers=None):
        """pixel_values (N, 3, H, W). `num_layers`: run only the first k encoder layers (the outputs are
        then those of a k-layer tower). Returns {"last_hidden_state" (N, 1 + P, C), "pooler_output" (N, C),
        and with `output_hidden_states` "hidden_states" (k + 1, N, 1 + P, C), the embeddings first}."""
        x = self.pre_layernorm(self.embeddings(jnp.transpose(pixel_values, (0, 2, 3, 1))))
        x, hidden = self.encoder(x, num_layers=num_layers, output_hidden_states=output_hidden_states)
        out = {"last_hidden_state": x, "pooler_output": self.post_layernorm(x[:, 0])}
        if output_hidden_states:
            out["hidden_states"] = hidden
        return out

    def features(self, pixel_values):
        """What VideoLLaMA 2 passes to its connector: (N, P, C), or (N, 1 + P, C) for `cls_patch`."""
        c = self.config
        if c.select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"CLIP select_feature '{c.select_feature}' is not 'patch' or 'cls_patch'")
        x = self(pixel_values, num_layers=layers_for_select(c))["last_hidden_state"]
        return x[:, 1:] if c.select_feature == "patch" else x


def hf_key_map(config: VisionConfig, prefix: str = "vision_model.") -> KeyMap:
    """HF `CLIPVisionModel` names under `prefix` (`model.vision_tower.vision_tower.vision_model.` inside a
    video-only VideoLLaMA 2 checkpoint) -> our params. Note HF's `pre_layrnorm` spelling."""
    km = KeyMap().ignore(*(prefix + k for k in IGNORED_KEYS))
    km.add(f"{prefix}embeddings.patch_embedding.weight", ("embeddings", "patch_embedding", "kernel"), "conv")
    km.add(f"{prefix}embeddings.class_embedding", ("embeddings", "class_embedding"))
    km.add(f"{prefix}embeddings.position_embedding.weight", ("embeddings", "position_embedding"))
    for hf_name, ours in (("pre_layrnorm", "pre_layernorm"), ("post_layernorm", "post_layernorm")):
        km.add(f"{prefix}{hf_name}.weight", (ours, "scale"))
        km.add(f"{prefix}{hf_name}.bias", (ours, "bias"))
    return km + encoder_key_map(config.num_layers, f"{prefix}encoder.", ("encoder",))
