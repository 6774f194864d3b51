"""FLOPs of one train step, for the MFU metric and the planner's step-time estimate.

MFU = estimated step FLOPs / (step time x devices x peak), with the peak per JAX `device_kind` from
`vllama_jax/devices.py` (the one device table; `peak_flops` is re-exported here).

The estimate counts matmuls, 2 FLOPs per multiply-add: a part with N matmul params that sees t tokens
costs 2 N t forward, 2 N t more backward to pass gradients to its input when something before it
trains, and 2 N t more for its own weight gradients when it trains (the usual 6 N t when everything
trains). The decoder adds causal attention (QK^T and PV: 2 x 2 L'^2 H hd per layer and sample, halved
for the causal mask), whose backward costs two forwards. Connector convolutions are counted as if
every param met every frame token, an overestimate of a part that is ~1 % of the total.
"""
from __future__ import annotations

import math
from typing import Dict

import jax
import numpy as np

from vllama_jax.config import VideoLLaMA2Config
from vllama_jax.models.sequence import audio_tokens

# Which parts feed which: a part needs input gradients when any part upstream of it trains.
UPSTREAM = {"vision": (), "connector": ("vision",), "audio": (), "audio_projector": ("audio",),
            "decoder": ("vision", "connector", "audio", "audio_projector")}


def matmul_params(params) -> Dict[str, int]:
    """Params per top-level part, without the decoder's embedding table (a lookup, not a matmul)."""
    counts: Dict[str, int] = {}
    for kp, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(getattr(k, "key", k)) for k in kp]
        if names[0] == "decoder" and "embed_tokens" in names:
            continue
        counts[names[0]] = counts.get(names[0], 0) + int(math.prod(np.shape(x)))
    return counts


def train_step_flops(config: VideoLLaMA2Config, counts: Dict[str, int], trains: Dict[str, bool],
                     batch: int, seq_len: int) -> float:
    """Estimated FLOPs of one optimizer step over `batch` samples.

    counts: `matmul_params(params)`; trains: part -> whether any of its params train; seq_len: L' of
    the spliced sequence the decoder sees."""
    tokens = {"decoder": batch * seq_len}
    if config.vision is not None:
        tokens["vision"] = tokens["connector"] = batch * config.num_frames * config.vision.num_positions
    if config.audio is not None:
        tokens["audio"] = tokens["audio_projector"] = batch * audio_tokens(config)
    total = 0.0
    for part, n in counts.items():
        passes = 1 + any(trains.get(u, False) for u in UPSTREAM.get(part, ())) + trains.get(part, False)
        total += 2.0 * n * tokens.get(part, 0) * passes
    d = config.decoder
    attn_fwd = 2 * 2 * seq_len * seq_len * d.num_heads * d.dim_per_head * d.num_layers * batch / 2
    backward = trains.get("decoder", False) or any(trains.get(u, False) for u in UPSTREAM["decoder"])
    return total + attn_fwd * (3 if backward else 1)  # attention's backward is two forwards' worth
