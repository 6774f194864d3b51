"""VideoLLaMA 2: vision tower -> connector, BEATs -> audio projector, spliced into a causal decoder.

    video (B, T, 3, H, W) --fold frames--> tower (B*T, N, C) --unfold--> connector (B, Nv, D) ─┐
    audio (B, F, 128) fbank --> BEATs (B, Na, C_a) --> audio projector (B, Na, D) ─────────────┤
    input_ids (B, L) with one placeholder per sample --embed--> (B, L, D) ──── splice ─────────┴─> decoder

The splice reproduces the original's `prepare_inputs_labels_for_multimodal`: the placeholder (-200
image, -201 video, -202 audio) is replaced by the sample's features (an audio-visual sample: video
features, then audio features), labels there become -100, and the batch is right-padded (zeros, mask
False, label -100). Here it is index arithmetic on a fixed-length buffer of L' = L - 1 + Nv (+ Na)
positions, so one compiled function serves every batch of the same shapes.

The attention mask of a spliced sample is the input mask carried along with its tokens (features count
as attended). For right-padded or unpadded inputs, the only ones the original handles, this is exactly
the original's mask; for left-padded inputs the original shifts its mask off the tokens, we do not.

Batch (all fixed shapes):
    input_ids (B, L) int, attention_mask (B, L) bool, labels (B, L) int (optional),
    video (B, T, 3, H, W) float (images repeated T times), has_video (B,) bool,
    audio (B, F, 128) float fbank, has_audio (B,) bool  (audio-visual models only)
Params: {"decoder", "vision", "connector"} and, with audio, {"audio", "audio_projector"}.
"""
from __future__ import annotations

from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from vllama_jax.config import (AUDIO_TOKEN_INDEX, IGNORE_INDEX, IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX,
                               VideoLLaMA2Config)
from vllama_jax.models.beats import BEATs
from vllama_jax.models.connectors import build_connector
from vllama_jax.models.decoder import Decoder
from vllama_jax.models.vision_tower import vision_tower_class


def is_placeholder(ids):
    return (ids == IMAGE_TOKEN_INDEX) | (ids == VIDEO_TOKEN_INDEX) | (ids == AUDIO_TOKEN_INDEX)


def splice(text_embeds, input_ids, attention_mask, labels, media, media_len):
    """Replace each sample's placeholder by its media features, on a fixed-length buffer.

    text_embeds (B, L, D); input_ids, attention_mask, labels (B, L); media (B, M, D) with the sample's
    features first; media_len (B,) int: how many of the M are real (0 for a text-only sample).
    Returns embeds (B, L - 1 + M, D), mask (B, L - 1 + M) bool, labels (B, L - 1 + M).
    """
    b, l, _ = text_embeds.shape
    m = media.shape[1]
    out_len = l - 1 + m
    ph = is_placeholder(input_ids)
    has_ph = ph.any(axis=1)
    p = jnp.where(has_ph, jnp.argmax(ph, axis=1), l)  # placeholder position, or L when none
    n = jnp.where(has_ph, media_len, 0)
    text_len = jnp.where(has_ph, l - 1, l)  # text tokens that remain after removing the placeholder

    j = jnp.arange(out_len)[None, :]
    p, n = p[:, None], n[:, None]
    in_media = (j >= p) & (j < p + n)
    before = j < p
    tok_idx = jnp.where(before, j, j - n + 1)  # text position that lands at j (after the media: skip the placeholder)
    is_text = ~in_media & (jnp.where(before, j, j - n) < text_len[:, None])
    tok_idx = jnp.clip(tok_idx, 0, l - 1)
    med_idx = jnp.clip(j - p, 0, m - 1)

    take = lambda x, idx: jnp.take_along_axis(x, idx, axis=1)
    embeds = jnp.where(is_text[..., None], take(text_embeds, tok_idx[..., None]), 0.0)
    embeds = jnp.where(in_media[..., None], take(media, med_idx[..., None]).astype(embeds.dtype), embeds)
    mask = (is_text & take(attention_mask.astype(bool), tok_idx)) | in_media
    new_labels = None
    if labels is not None:
        new_labels = jnp.where(is_text, take(labels, tok_idx), IGNORE_INDEX)
    return embeds, mask, new_labels


class VideoLLaMA2(nn.Module):
    config: VideoLLaMA2Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.decoder = Decoder(cfg.decoder, remat_policy=self.remat_policy, **kw)
        if cfg.vision is not None:
            self.vision = vision_tower_class(cfg.vision.family)(cfg.vision, **kw)
            self.connector = build_connector(cfg.connector, **kw)
        if cfg.audio is not None:
            self.audio = BEATs(cfg.audio, remat_policy=self.remat_policy, **kw)
            self.audio_projector = build_connector(cfg.audio_projector, **kw)

    # --- encoders --------------------------------------------------------------------------------------
    def encode_video(self, video):
        """(B, T, 3, H, W) -> (B, Nv, D): frames folded into the batch for the tower, unfolded for the connector."""
        b, t = video.shape[:2]
        feats = self.vision.features(video.reshape((b * t,) + video.shape[2:]))
        feats = feats.reshape((b, t) + feats.shape[1:])
        return self.connector(feats)

    def encode_audio(self, fbank):
        """(B, F, 128) fbank -> (B, Na, D)."""
        return self.audio_projector(self.audio(fbank))

    def media_features(self, batch):
        """(B, M, D) features per sample (video first, then audio) and (B,) how many are real."""
        b = batch["input_ids"].shape[0]
        parts, lens = [], []
        has_v = has_a = None
        if self.config.vision is not None and batch.get("video") is not None:
            v = self.encode_video(batch["video"])
            has_v = batch.get("has_video", jnp.ones((b,), bool)).astype(bool)
            parts.append(v)
            lens.append(jnp.where(has_v, v.shape[1], 0))
        if self.config.audio is not None and batch.get("audio") is not None:
            a = self.encode_audio(batch["audio"])
            has_a = batch.get("has_audio", jnp.ones((b,), bool)).astype(bool)
            if parts:
                # An audio-only sample puts its audio first: shift it over the (unused) video slots.
                v = parts[0]
                joined = jnp.concatenate([v, a.astype(v.dtype)], axis=1)
                audio_first = jnp.concatenate([a.astype(v.dtype), v], axis=1)
                parts = [jnp.where((~has_v)[:, None, None], audio_first, joined)]
            else:
                parts.append(a)
            lens.append(jnp.where(has_a, a.shape[1], 0))
        if not parts:
            return None, None
        return parts[0], sum(lens)

    # --- the forward pass ------------------------------------------------------------------------------
    def prepare_inputs(self, batch) -> Dict[str, jax.Array]:
        """The spliced sequence: inputs_embeds (B, L', D), attention_mask (B, L'), labels (B, L')."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        mask = jnp.ones(ids.shape, bool) if mask is None else mask
        text = self.decoder.embed(jnp.where(is_placeholder(ids), 0, ids))
        media, media_len = self.media_features(batch)
        if media is None:
            return {"inputs_embeds": text, "attention_mask": mask.astype(bool), "labels": batch.get("labels")}
        embeds, new_mask, labels = splice(text, ids, mask, batch.get("labels"), media, media_len)
        return {"inputs_embeds": embeds, "attention_mask": new_mask, "labels": labels}

    def __call__(self, batch, return_hidden: bool = False):
        out = self.prepare_inputs(batch)
        emb = out["inputs_embeds"]
        # The original's forward numbers positions 0..L'-1 whatever the mask (right padding only).
        positions = jnp.broadcast_to(jnp.arange(emb.shape[1]), emb.shape[:2])
        logits, _ = self.decoder(inputs_embeds=emb, attention_mask=out["attention_mask"], positions=positions,
                                 return_hidden=return_hidden)
        out["hidden" if return_hidden else "logits"] = logits
        return out

    def decode(self, inputs_embeds=None, input_ids=None, *, attention_mask, positions, cache, cache_index):
        """One decoder call on a KV cache (prefill or decode step); see models/decoder.py."""
        return self.decoder(input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                            positions=positions, cache=cache, cache_index=cache_index)
