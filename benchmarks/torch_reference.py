"""A PyTorch VideoLLaMA 2, assembled from independent parts, for parity tests and the bench.

    TorchSTC(kind, cin, d)        the STC connector family from timm's `RegStage` (LayerNorm2d, SiLU) and
                                  torch's Conv3d / AvgPool3d / Linear / GELU: (B, T, N, C) -> (B, Nv, D)
    TorchVideoLLaMA2(tower, connector, lm, select_layer=-2)
                                  transformers' CLIP / SigLIP vision model -> TorchSTC -> the video tokens
                                  spliced at the placeholder -> transformers' Mistral / Qwen2 ForCausalLM
    release_state_dict(model)     its tensors under the names the original's checkpoints use

The structure follows the original's forward (facts read from it: the tower's `select_layer` hidden
state without the CLS token, frames folded into the batch for the tower and unfolded for the connector,
the tower run without gradients, the media tokens replacing the one placeholder); the code is written
here, from timm's, torch's and transformers' own modules. Nothing in it comes from vllama_jax, so it
checks ours, not a re-derivation of it.
"""
from __future__ import annotations

from typing import Dict

import torch
from timm.layers import LayerNorm2d
from timm.models.regnet import RegStage

IGNORE_INDEX = -100

# The original's constructor arguments (projector.py): (sampler, (t, h, w) down-sampling, padding, stage depth).
STC_FAMILY = {
    "stc_connector": ("conv", (2, 2, 2), 1, 4),
    "stp_connector": ("pool", (2, 2, 2), 0, 4),
    "stc_connector_v35": ("conv", (2, 2, 2), 0, 4),
    "spatial_conv": ("conv", (1, 2, 2), 1, 0),
    "spatial_pool": ("pool", (1, 2, 2), 0, 0),
}


class TorchSTC(torch.nn.Module):
    """The original's STC-family forward: per frame s1, 3-D sampler, per frame s2, readout MLP."""

    def __init__(self, kind, cin, d):
        super().__init__()
        sampler, k, pad, depth = STC_FAMILY[kind]
        stage = dict(depth=depth, stride=1, dilation=1, act_layer=torch.nn.SiLU, norm_layer=LayerNorm2d)
        self.s1 = RegStage(in_chs=cin, out_chs=d, **stage) if depth else torch.nn.Identity()
        down = (torch.nn.Conv3d(d, d, kernel_size=k, stride=k, padding=pad, bias=True) if sampler == "conv"
                else torch.nn.AvgPool3d(k))
        self.sampler = torch.nn.Sequential(down, torch.nn.SiLU())
        self.s2 = RegStage(in_chs=d, out_chs=d, **stage) if depth else torch.nn.Identity()
        self.readout = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.GELU(), torch.nn.Linear(d, d))

    def forward(self, x):  # (B, T, N, C)
        b, t, n, c = x.shape
        s = int(round(n ** 0.5))
        x = x.reshape(b * t, s, s, c).permute(0, 3, 1, 2)  # (B*T, C, h, w)
        x = self.s1(x)
        x = x.reshape(b, t, *x.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, C, T, h, w)
        x = self.sampler(x)
        _, d, t2, h2, w2 = x.shape
        x = self.s2(x.permute(0, 2, 1, 3, 4).reshape(b * t2, d, h2, w2))
        x = x.reshape(b, t2, d, h2 * w2).permute(0, 1, 3, 2).reshape(b, t2 * h2 * w2, d)
        return self.readout(x)


class TorchVideoLLaMA2(torch.nn.Module):
    """Video + text -> logits (and the loss with labels). `tower`: transformers' CLIPVisionModel or
    SiglipVisionModel; `connector`: a TorchSTC; `lm`: a transformers *ForCausalLM."""

    def __init__(self, tower, connector, lm, select_layer: int = -2, drop_cls: bool = True):
        super().__init__()
        self.tower, self.connector, self.lm = tower, connector, lm
        self.select_layer, self.drop_cls = select_layer, drop_cls

    def encode_video(self, video):
        """(B, T, 3, H, W) -> (B, Nv, D). The tower is frozen in every phase: no gradients through it."""
        b, t = video.shape[:2]
        with torch.no_grad():
            hidden = self.tower(pixel_values=video.flatten(0, 1), output_hidden_states=True).hidden_states
            feats = hidden[self.select_layer]
            if self.drop_cls:
                feats = feats[:, 1:]
        return self.connector(feats.reshape(b, t, *feats.shape[1:]))

    def forward(self, input_ids, placeholder: int, video, labels=None):
        """input_ids (B, L), every row with its placeholder at column `placeholder` (no padding); video
        (B, T, 3, H, W); labels (B, L) or None. Returns the transformers output over L - 1 + Nv positions."""
        embed = self.lm.get_input_embeddings()
        text = embed(input_ids.clamp(min=0))
        media = self.encode_video(video).to(text.dtype)
        p = placeholder
        embeds = torch.cat([text[:, :p], media, text[:, p + 1:]], dim=1)
        if labels is not None:
            ignore = torch.full(media.shape[:2], IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            labels = torch.cat([labels[:, :p], ignore, labels[:, p + 1:]], dim=1)
        return self.lm(inputs_embeds=embeds, labels=labels, use_cache=False)


def release_state_dict(model: TorchVideoLLaMA2) -> Dict[str, torch.Tensor]:
    """The tensors under the original checkpoints' names (the `main` branch's video layout: the whole
    vision model inside the checkpoint)."""
    out = {}
    for k, v in model.tower.state_dict().items():
        k = k[len("vision_model."):] if k.startswith("vision_model.") else k
        out["model.vision_tower.vision_tower.vision_model." + k] = v
    out.update({"model.mm_projector." + k: v for k, v in model.connector.state_dict().items()})
    out.update(model.lm.state_dict())  # model.embed_tokens / model.layers.* / model.norm / lm_head
    return out
