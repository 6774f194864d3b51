"""Model configs: frozen dataclasses, presets named after the released models, and HF `config.json` readers.

This file is the single place that knows HF field names and the released sizes. Every model part has
one config class with `from_hf_config(dict)` (unknown fields ignored, missing required ones an error
that names the field) and `to_hf_config()`.

    DecoderConfig        Mistral / Qwen2 / Mixtral causal decoder (one class, `family` picks the flags)
    VisionConfig         CLIP or SigLIP vision transformer (+ which hidden state VideoLLaMA 2 takes)
    ConnectorConfig      vision-language connector (`mm_projector_type`) or the audio projector
    BEATsConfig          BEATs audio encoder
    VideoLLaMA2Config    the whole: decoder + vision tower + connector (+ audio tower + audio projector)
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Optional, Tuple, Union

# Placeholder ids in `input_ids`, as the original uses them (constants.py of VideoLLaMA 2).
IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
VIDEO_TOKEN_INDEX = -201
AUDIO_TOKEN_INDEX = -202
MODAL_TOKEN_INDEX = {"<image>": IMAGE_TOKEN_INDEX, "<video>": VIDEO_TOKEN_INDEX, "<audio>": AUDIO_TOKEN_INDEX}


class ConfigError(ValueError):
    """A config.json that cannot be turned into a model config (missing field, unknown model_type)."""


def _require(d: dict, key: str, where: str):
    if key not in d or d[key] is None:
        raise ConfigError(f"{where}: required field '{key}' is missing")
    return d[key]


def _known_fields(cls, d: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------

DECODER_FAMILIES = ("mistral", "qwen2", "mixtral")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """A causal decoder. `family` sets the flags: qwen2 has q/k/v biases, mixtral has `num_experts`."""

    family: str = "mistral"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: Optional[int] = None  # None: hidden_size // num_heads
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 32768
    sliding_window: Optional[int] = None  # None: full causal attention
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    num_experts: int = 0  # 0: dense MLP; >0: Mixtral sparse MoE
    num_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.02
    # Training adds router_aux_loss_coef x the load-balancing loss only when this is set, as HF does
    # (Mixtral's default, and the released VideoLLaMA2-8x7B's: off).
    output_router_logits: bool = False
    tie_word_embeddings: bool = False
    # Std of the normal init of the embeddings and every projection (HF's `initializer_range`): only a
    # model trained from scratch sees it. 0.02 suits released widths (~1.3 / sqrt(4096)); a narrow model
    # wants ~1 / sqrt(hidden_size), or its attention starts uniform and its blocks near zero (the demo).
    initializer_range: float = 0.02
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[Union[int, Tuple[int, ...]]] = None
    pad_token_id: Optional[int] = None

    def __post_init__(self):
        if self.family not in DECODER_FAMILIES:
            raise ConfigError(f"decoder family '{self.family}' is not one of {DECODER_FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def eos_ids(self) -> Tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return (self.eos_token_id,) if isinstance(self.eos_token_id, int) else tuple(self.eos_token_id)

    @classmethod
    def from_hf_config(cls, d: dict) -> "DecoderConfig":
        """From a transformers config dict of model_type mistral / qwen2 / mixtral (or a VideoLLaMA 2 one)."""
        model_type = d.get("model_type", "")
        family = model_type.replace("videollama2_", "")
        if family == "videollama2":  # the legacy model_type of the first release was a Mistral decoder
            family = "mistral"
        if family not in DECODER_FAMILIES:
            raise ConfigError(f"model_type '{model_type}' is not a supported decoder ({', '.join(DECODER_FAMILIES)})")
        where = f"{model_type} config"
        # transformers 5 moved rope_theta into rope_parameters; released configs still carry rope_theta.
        rope_theta = d.get("rope_theta")
        if rope_theta is None and isinstance(d.get("rope_parameters"), dict):
            rope_theta = d["rope_parameters"].get("rope_theta")
        sliding = d.get("sliding_window")
        if family == "qwen2" and not d.get("use_sliding_window", False):
            sliding = None  # Qwen2 carries a sliding_window value but only uses it when use_sliding_window
        eos = d.get("eos_token_id")
        return cls(
            family=family,
            vocab_size=_require(d, "vocab_size", where),
            hidden_size=_require(d, "hidden_size", where),
            intermediate_size=_require(d, "intermediate_size", where),
            num_layers=_require(d, "num_hidden_layers", where),
            num_heads=_require(d, "num_attention_heads", where),
            num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim"),
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            sliding_window=sliding,
            attention_bias=family == "qwen2",
            num_experts=d.get("num_local_experts", 0) if family == "mixtral" else 0,
            num_experts_per_tok=d.get("num_experts_per_tok", 2),
            router_aux_loss_coef=d.get("router_aux_loss_coef", 0.02),
            output_router_logits=bool(d.get("output_router_logits", False)) if family == "mixtral" else False,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            initializer_range=float(d.get("initializer_range", 0.02)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=d.get("pad_token_id"),
        )

    def to_hf_config(self) -> dict:
        d = {
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "sliding_window": self.sliding_window,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }
        if self.head_dim is not None:
            d["head_dim"] = self.head_dim
        if self.family == "qwen2":
            d["use_sliding_window"] = self.sliding_window is not None
        if self.family == "mixtral":
            d["num_local_experts"] = self.num_experts
            d["num_experts_per_tok"] = self.num_experts_per_tok
            d["router_aux_loss_coef"] = self.router_aux_loss_coef
            d["output_router_logits"] = self.output_router_logits
        return d


# ----------------------------------------------------------------------------------------------------
# Vision towers
# ----------------------------------------------------------------------------------------------------

VISION_FAMILIES = ("clip", "siglip")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """CLIP (class token, pre-LN, quick_gelu) or SigLIP (no class token, gelu-tanh) vision transformer."""

    family: str = "clip"
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    # What VideoLLaMA 2 takes: hidden_states[select_layer]; 'patch' drops CLIP's class token.
    select_layer: int = -2
    select_feature: str = "patch"
    # SigLIP's attention-pooling head (HF `vision_use_head`): in its checkpoints, never used by VideoLLaMA 2.
    pooling_head: bool = False

    def __post_init__(self):
        if self.family not in VISION_FAMILIES:
            raise ConfigError(f"vision family '{self.family}' is not one of {VISION_FAMILIES}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_positions(self) -> int:
        return self.num_patches + (1 if self.family == "clip" else 0)

    @property
    def num_feature_tokens(self) -> int:
        """Tokens per frame that VideoLLaMA 2 passes on to the connector."""
        if self.family == "clip" and self.select_feature == "cls_patch":
            return self.num_patches + 1
        return self.num_patches

    @classmethod
    def from_hf_config(cls, d: dict, select_layer: int = -2, select_feature: str = "patch") -> "VisionConfig":
        """From a CLIPVisionConfig / SiglipVisionConfig dict (or a full CLIP/SigLIP config's vision_config)."""
        model_type = d.get("model_type", "")
        if "vision_config" in d:
            d = {**d["vision_config"], "model_type": model_type.replace("_model", "") + "_vision_model"}
            model_type = d["model_type"]
        if model_type.startswith("clip"):
            family, act, eps = "clip", "quick_gelu", 1e-5
        elif model_type.startswith("siglip"):
            family, act, eps = "siglip", "gelu_pytorch_tanh", 1e-6
        else:
            raise ConfigError(f"model_type '{model_type}' is not a supported vision tower (clip_vision_model, siglip_vision_model)")
        where = f"{model_type} config"
        return cls(
            family=family,
            image_size=_require(d, "image_size", where),
            patch_size=_require(d, "patch_size", where),
            num_channels=d.get("num_channels", 3),
            hidden_size=_require(d, "hidden_size", where),
            intermediate_size=_require(d, "intermediate_size", where),
            num_layers=_require(d, "num_hidden_layers", where),
            num_heads=_require(d, "num_attention_heads", where),
            layer_norm_eps=float(d.get("layer_norm_eps", eps)),
            hidden_act=d.get("hidden_act", act),
            select_layer=select_layer,
            select_feature=select_feature,
            pooling_head=family == "siglip" and bool(d.get("vision_use_head", True)),
        )

    def to_hf_config(self) -> dict:
        return {
            "model_type": f"{self.family}_vision_model",
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": self.hidden_act,
            **({"vision_use_head": self.pooling_head} if self.family == "siglip" else {}),
        }


# ----------------------------------------------------------------------------------------------------
# Connectors (vision-language) and the audio projector
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SpatioTemporalSpec:
    """What sets one STC-family type apart: its sampler and whether it has RegNet stages."""

    sampler: str  # "conv" (Conv3d + SiLU, params `sampler`) or "pool" (AvgPool3d + SiLU)
    downsample: Tuple[int, int, int]  # (t, h, w) kernel = stride
    padding: int  # on every side of t, h and w (the conv only)
    stage_depth: int  # RegNet blocks per stage; 0: no `s1` / `s2`


# `mm_projector_type` -> what it is: the one table of types (models/connectors.py builds each family).
SPATIO_TEMPORAL_TYPES = {
    "stc_connector": SpatioTemporalSpec("conv", (2, 2, 2), 1, 4),
    "stp_connector": SpatioTemporalSpec("pool", (2, 2, 2), 0, 4),
    "stc_connector_v35": SpatioTemporalSpec("conv", (2, 2, 2), 0, 4),
    "spatial_conv": SpatioTemporalSpec("conv", (1, 2, 2), 1, 0),
    "spatial_pool": SpatioTemporalSpec("pool", (1, 2, 2), 0, 0),
}
CONNECTOR_TYPES = tuple(SPATIO_TEMPORAL_TYPES) + ("mlp2x_gelu", "linear", "identity")
_MLP_TYPE = re.compile(r"mlp(\d+)x_gelu")  # any depth N, as the original's regex


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
    """`mm_projector_type` with its widths; `family` says which module it is (checked when made):
    "spatio_temporal" (`spec`), "mlp" (`mlp_depth` linear layers; `linear` is depth 1) or "identity"."""

    type: str = "stc_connector"
    in_dim: int = 1024  # mm_hidden_size: the vision tower (or BEATs) width
    out_dim: int = 4096  # the decoder width

    def __post_init__(self):
        self.family  # noqa: B018  (raises ConfigError for an unknown type)

    @property
    def family(self) -> str:
        if self.type in SPATIO_TEMPORAL_TYPES:
            return "spatio_temporal"
        if self.type == "identity":
            return "identity"
        if self.type == "linear" or _MLP_TYPE.fullmatch(self.type):
            return "mlp"
        raise ConfigError(f"unknown projector type '{self.type}'; known: {', '.join(CONNECTOR_TYPES)} (or mlpNx_gelu)")

    @property
    def spec(self) -> SpatioTemporalSpec:
        return SPATIO_TEMPORAL_TYPES[self.type]

    @property
    def mlp_depth(self) -> int:
        return 1 if self.type == "linear" else int(_MLP_TYPE.fullmatch(self.type).group(1))


# ----------------------------------------------------------------------------------------------------
# BEATs audio encoder
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BEATsConfig:
    """BEATs (iter3+, AS2M) encoder. Field names are the `cfg` keys of a BEATs `.pt`."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    deep_norm: bool = True
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    layer_norm_eps: float = 1e-5
    # Input normalisation of the fbank, as BEATs' preprocess applies it.
    fbank_mean: float = 15.41663
    fbank_std: float = 6.55582

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "BEATsConfig":
        """From the `cfg` dict of a BEATs `.pt` (unknown keys such as dropouts are ignored)."""
        return cls(**_known_fields(cls, cfg))

    def to_hf_config(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------
# The whole model
# ----------------------------------------------------------------------------------------------------

VIDEOLLAMA2_MODEL_TYPES = ("videollama2", "videollama2_mistral", "videollama2_mixtral", "videollama2_qwen2")


# Frames per video where nothing else says (the original's NUM_FRAMES): the config of a checkpoint, and
# the processor built without one.
DEFAULT_NUM_FRAMES = 8

@dataclasses.dataclass(frozen=True)
class VideoLLaMA2Config:
    """Decoder + vision tower + connector, and for audio-visual models BEATs + audio projector."""

    decoder: DecoderConfig
    vision: Optional[VisionConfig]
    connector: Optional[ConnectorConfig]
    audio: Optional[BEATsConfig] = None
    audio_projector: Optional[ConnectorConfig] = None
    num_frames: int = DEFAULT_NUM_FRAMES
    image_aspect_ratio: str = "pad"
    model_type: str = "videollama2_mistral"
    vision_tower_name: Optional[str] = None  # `mm_vision_tower`: a folder or a hub id
    audio_tower_name: Optional[str] = None  # `mm_audio_tower`: a BEATs .pt

    @classmethod
    def from_hf_config(cls, d: dict, vision: Optional[VisionConfig] = None,
                       audio: Optional[BEATsConfig] = None) -> "VideoLLaMA2Config":
        """From a VideoLLaMA 2 `config.json`. The vision tower's own config lives in another folder
        (`mm_vision_tower`), so the caller resolves it and passes `vision` (and `audio` for BEATs)."""
        model_type = d.get("model_type", "")
        if model_type not in VIDEOLLAMA2_MODEL_TYPES:
            raise ConfigError(f"model_type '{model_type}' is not a VideoLLaMA 2 model ({', '.join(VIDEOLLAMA2_MODEL_TYPES)})")
        decoder = DecoderConfig.from_hf_config(d)
        if vision is not None:
            vision = dataclasses.replace(vision, select_layer=d.get("mm_vision_select_layer", -2),
                                         select_feature=d.get("mm_vision_select_feature", "patch"))
        connector = None
        if d.get("mm_vision_tower"):
            connector = ConnectorConfig(type=d.get("mm_projector_type", "linear"),
                                        in_dim=_require(d, "mm_hidden_size", model_type), out_dim=decoder.hidden_size)
        audio_projector = None
        if d.get("mm_audio_tower"):
            audio = audio or BEATsConfig()
            audio_projector = ConnectorConfig(type=d.get("mm_projector_a_type", "linear"),
                                              in_dim=d.get("mm_hidden_size_a", audio.encoder_embed_dim),
                                              out_dim=d.get("hidden_size_a", decoder.hidden_size))
        else:
            audio = None
        return cls(decoder=decoder, vision=vision, connector=connector, audio=audio, audio_projector=audio_projector,
                   num_frames=d.get("num_frames", DEFAULT_NUM_FRAMES), image_aspect_ratio=d.get("image_aspect_ratio", "pad"),
                   model_type=model_type, vision_tower_name=d.get("mm_vision_tower"),
                   audio_tower_name=d.get("mm_audio_tower"))

    def to_hf_config(self) -> dict:
        d = self.decoder.to_hf_config()
        d["model_type"] = self.model_type
        d["num_frames"] = self.num_frames
        d["image_aspect_ratio"] = self.image_aspect_ratio
        if self.vision is not None:
            d.update(mm_vision_tower=self.vision_tower_name, mm_hidden_size=self.connector.in_dim,
                     mm_projector_type=self.connector.type, mm_vision_select_layer=self.vision.select_layer,
                     mm_vision_select_feature=self.vision.select_feature)
        if self.audio is not None:
            d.update(mm_audio_tower=self.audio_tower_name, mm_projector_a_type=self.audio_projector.type,
                     mm_hidden_size_a=self.audio_projector.in_dim, hidden_size_a=self.audio_projector.out_dim)
        return d


# ----------------------------------------------------------------------------------------------------
# Presets: the released models (sizes from their config.json files) and tiny ones for tests
# ----------------------------------------------------------------------------------------------------

MISTRAL_7B_INSTRUCT_V02 = DecoderConfig(
    family="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
    num_kv_heads=8, rope_theta=1e6, rms_norm_eps=1e-5, max_position_embeddings=32768, sliding_window=None,
    bos_token_id=1, eos_token_id=2)
MIXTRAL_8X7B_INSTRUCT_V01 = dataclasses.replace(MISTRAL_7B_INSTRUCT_V02, family="mixtral", num_experts=8,
                                                num_experts_per_tok=2)
QWEN2_7B_INSTRUCT = DecoderConfig(
    family="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
    num_kv_heads=4, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768, attention_bias=True,
    bos_token_id=151643, eos_token_id=151645)
QWEN2_72B_INSTRUCT = DecoderConfig(
    family="qwen2", vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_layers=80, num_heads=64,
    num_kv_heads=8, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768, attention_bias=True,
    bos_token_id=151643, eos_token_id=151645)

CLIP_VIT_L_14_336 = VisionConfig(family="clip", image_size=336, patch_size=14, hidden_size=1024,
                                 intermediate_size=4096, num_layers=24, num_heads=16, layer_norm_eps=1e-5,
                                 hidden_act="quick_gelu")
SIGLIP_SO400M_14_384 = VisionConfig(family="siglip", image_size=384, patch_size=14, hidden_size=1152,
                                    intermediate_size=4304, num_layers=27, num_heads=16, layer_norm_eps=1e-6,
                                    hidden_act="gelu_pytorch_tanh", pooling_head=True)
BEATS_ITER3_PLUS_AS2M = BEATsConfig()

# Hub ids of the towers named by released configs' `mm_vision_tower`: built in, since nothing is downloaded.
KNOWN_VISION_TOWERS = {
    "openai/clip-vit-large-patch14-336": CLIP_VIT_L_14_336,
    "google/siglip-so400m-patch14-384": SIGLIP_SO400M_14_384,
}


def _videollama2(decoder, vision, num_frames, model_type, tower, audio=False, projector="stc_connector"):
    return VideoLLaMA2Config(
        decoder=decoder, vision=vision,
        connector=ConnectorConfig(projector, vision.hidden_size, decoder.hidden_size),
        audio=BEATS_ITER3_PLUS_AS2M if audio else None,
        audio_projector=(ConnectorConfig("mlp2x_gelu", BEATS_ITER3_PLUS_AS2M.encoder_embed_dim, decoder.hidden_size)
                         if audio else None),
        num_frames=num_frames, model_type=model_type, vision_tower_name=tower,
        audio_tower_name="BEATs_iter3_plus_AS2M.pt" if audio else None)


PRESETS = {
    "VideoLLaMA2-7B": _videollama2(MISTRAL_7B_INSTRUCT_V02, CLIP_VIT_L_14_336, 8, "videollama2_mistral",
                                   "openai/clip-vit-large-patch14-336"),
    "VideoLLaMA2-7B-16F": _videollama2(MISTRAL_7B_INSTRUCT_V02, CLIP_VIT_L_14_336, 16, "videollama2_mistral",
                                       "openai/clip-vit-large-patch14-336"),
    "VideoLLaMA2-8x7B": _videollama2(MIXTRAL_8X7B_INSTRUCT_V01, CLIP_VIT_L_14_336, 8, "videollama2_mixtral",
                                     "openai/clip-vit-large-patch14-336"),
    "VideoLLaMA2-72B": _videollama2(QWEN2_72B_INSTRUCT, CLIP_VIT_L_14_336, 8, "videollama2_qwen2",
                                    "openai/clip-vit-large-patch14-336"),
    # The 2.1 releases use the unpadded STC variant (mm_projector_type "stc_connector_v35").
    "VideoLLaMA2.1-7B-16F": _videollama2(QWEN2_7B_INSTRUCT, SIGLIP_SO400M_14_384, 16, "videollama2_qwen2",
                                         "google/siglip-so400m-patch14-384", projector="stc_connector_v35"),
    "VideoLLaMA2.1-7B-AV": _videollama2(QWEN2_7B_INSTRUCT, SIGLIP_SO400M_14_384, 16, "videollama2_qwen2",
                                        "google/siglip-so400m-patch14-384", audio=True,
                                        projector="stc_connector_v35"),
}

# Tiny variants for tests and the CPU smoke run: the same code paths, a few hundred thousand params.
TINY_DECODERS = {
    "mistral": DecoderConfig(family="mistral", vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2,
                             num_heads=4, num_kv_heads=2, rope_theta=1e6, rms_norm_eps=1e-5,
                             max_position_embeddings=1024, bos_token_id=1, eos_token_id=2),
    "qwen2": DecoderConfig(family="qwen2", vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2,
                           num_heads=4, num_kv_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
                           max_position_embeddings=1024, attention_bias=True, bos_token_id=1, eos_token_id=2),
    "mixtral": DecoderConfig(family="mixtral", vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2,
                             num_heads=4, num_kv_heads=2, rope_theta=1e6, rms_norm_eps=1e-5,
                             max_position_embeddings=1024, num_experts=4, num_experts_per_tok=2,
                             bos_token_id=1, eos_token_id=2),
}
TINY_CLIP = VisionConfig(family="clip", image_size=56, patch_size=14, hidden_size=32, intermediate_size=64,
                         num_layers=2, num_heads=4, layer_norm_eps=1e-5, hidden_act="quick_gelu")
TINY_SIGLIP = VisionConfig(family="siglip", image_size=56, patch_size=14, hidden_size=32, intermediate_size=64,
                           num_layers=2, num_heads=4, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                           pooling_head=True)
TINY_BEATS = BEATsConfig(embed_dim=32, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                         encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, num_buckets=32, max_distance=64)

PRESETS["tiny-mistral"] = dataclasses.replace(
    _videollama2(TINY_DECODERS["mistral"], TINY_CLIP, 4, "videollama2_mistral", "clip-vit-tiny-patch14-56"))
PRESETS["tiny-av-qwen2"] = VideoLLaMA2Config(
    decoder=TINY_DECODERS["qwen2"], vision=TINY_CLIP,
    connector=ConnectorConfig("stc_connector", TINY_CLIP.hidden_size, 64), audio=TINY_BEATS,
    audio_projector=ConnectorConfig("mlp2x_gelu", TINY_BEATS.encoder_embed_dim, 64), num_frames=4,
    model_type="videollama2_qwen2", vision_tower_name="clip-vit-tiny-patch14-56", audio_tower_name="BEATs_tiny.pt")


# The demo's model (`vllama-jax demo`, vllama_jax/demo/): the whole audio-visual architecture small
# enough to train from scratch on a 2-core CPU in minutes, on 40 x 40 px clips of 8 frames. Its vision
# tower hands on its last layer (2 layers: the usual second-to-last would leave one unused); BEATs
# takes 64 x 64 fbank patches, 92 tokens for the 30 s window instead of 16 x 16's 1496, which is what
# makes a CPU step affordable. The word-level tokenizer of the demo has fewer than 128 ids, and
# `<|im_end|>` (id 2) ends an answer. Its decoder starts at the init std of its width (1 / sqrt(64) =
# 0.125; the usual 0.02 suits ~4096): at 0.02 every attention starts uniform and every block near zero,
# and the demo's visual answers stalled at the class prior for hundreds of steps (docs/demo_findings.md).
# "-meanpool" is the same model with the `mlp2x_gelu` projector, which averages the frames (the baseline
# that cannot see motion).
DEMO_DECODER = DecoderConfig(family="qwen2", vocab_size=128, hidden_size=64, intermediate_size=256, num_layers=2,
                             num_heads=4, num_kv_heads=2, rope_theta=1e4, rms_norm_eps=1e-6,
                             max_position_embeddings=512, attention_bias=True, initializer_range=0.125,
                             bos_token_id=None, eos_token_id=2, pad_token_id=0)
DEMO_CLIP = VisionConfig(family="clip", image_size=40, patch_size=8, hidden_size=64, intermediate_size=128,
                         num_layers=2, num_heads=4, layer_norm_eps=1e-5, hidden_act="quick_gelu", select_layer=-1)
DEMO_BEATS = BEATsConfig(input_patch_size=64, embed_dim=32, encoder_layers=2, encoder_embed_dim=64,
                         encoder_ffn_embed_dim=128, encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4,
                         num_buckets=32, max_distance=64)


def _demo(projector: str) -> VideoLLaMA2Config:
    return VideoLLaMA2Config(
        decoder=DEMO_DECODER, vision=DEMO_CLIP,
        connector=ConnectorConfig(projector, DEMO_CLIP.hidden_size, DEMO_DECODER.hidden_size), audio=DEMO_BEATS,
        audio_projector=ConnectorConfig("mlp2x_gelu", DEMO_BEATS.encoder_embed_dim, DEMO_DECODER.hidden_size),
        num_frames=8, model_type="videollama2_qwen2", vision_tower_name="vision_tower",
        audio_tower_name="BEATs_demo.pt")


PRESETS["demo-av"] = _demo("stc_connector")
PRESETS["demo-av-meanpool"] = _demo("mlp2x_gelu")

def preset(name: str) -> VideoLLaMA2Config:
    if name not in PRESETS:
        raise KeyError(f"unknown preset '{name}'; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def load_config(path: str) -> dict:
    """The raw config.json of a checkpoint folder (or a path to the json itself)."""
    p = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.exists(p):
        raise FileNotFoundError(f"no config.json in {path}")
    return read_json(p)


def replace(cfg: Any, **changes) -> Any:
    """`dataclasses.replace`, re-exported so users can derive variants of presets."""
    return dataclasses.replace(cfg, **changes)
