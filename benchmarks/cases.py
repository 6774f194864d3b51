"""The side-by-side comparisons: one PyTorch reference (transformers) and our JAX model on the SAME
checkpoint and the SAME inputs, in one process.

    prefill   MistralForCausalLM / Qwen2ForCausalLM forward  vs  our jitted Decoder
              ids (B, S) -> logits (B, S, V)
    generate  HF generate(), greedy, with its KV cache       vs  our generate (one jitted while_loop)
              ids (B, L) -> (B, N) new ids
    vision    HF CLIPVisionModel forward                     vs  our CLIP tower
              pixels (T, 3, H, W) -> last_hidden_state (T, 1 + P, C)
    decode    HF generate(), greedy                          vs  our generate, float32 and int8 weights
              at real sizes (374M, 1B): tokens/s, and the fraction of the machine's memory bandwidth used
              (weight bytes read per step x steps/s over the copy bandwidth measured in the same run)
    video     the whole model on a 16-frame video prompt: HF CLIPVisionModel -> timm RegStage STC ->
              HF Qwen2ForCausalLM (torch_reference.py)       vs  our VideoLLaMA2 forward
              ids (B, L) + video (B, 16, 3, H, W) -> logits (B, L - 1 + Nv, V)
    train     one fine-tune step of that model (connector + decoder train, the tower frozen): loss,
              backward, gradient clipping, AdamW            vs  our train step (vllama_jax/train/step.py)

Each reference gets random weights, is written with `save_pretrained`, and ours is read from that folder
by `vllama_jax.load`, so the released key names and our loader are part of what runs. The weights are
drawn at unit-variance scale (HF's own init, std 0.02, would make every logit nearly 0, greedy choices
near-ties and the agreement figures meaningless). Everything is float32; JAX matmuls run at "highest"
precision (the caller sets it), PyTorch's at its default, which is float32 too.

Each case returns one result row: times of both sides, `ratio` = ours / PyTorch (below 1: we are
faster), and `agreement` (max abs difference of the outputs, or whether the greedy tokens are equal).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import vllama_jax
from vllama_jax.checkpoints.release import read_release
from vllama_jax.config import (IGNORE_INDEX, VIDEO_TOKEN_INDEX, ConnectorConfig, DecoderConfig, VideoLLaMA2Config,
                               VisionConfig)
from vllama_jax.generate import generate_from_embeds
from vllama_jax.loading import abstract_params
from vllama_jax.models.decoder import Decoder, init_cache, unrolled_decode
from vllama_jax.models.sequence import dummy_batch, video_tokens
from vllama_jax.models.videollama2 import VideoLLaMA2
from vllama_jax.quantize import quantize_params
from vllama_jax.train.config import OptimizerSection
from vllama_jax.train.optimizer import lr_schedule, make_optimizer, trainable_mask
from vllama_jax.train.step import make_train_step

from benchmarks.timing import Timing, compile_jax, copy_bandwidth, round_robin, side_by_side
from benchmarks.torch_reference import TorchSTC, TorchVideoLLaMA2, release_state_dict


@contextlib.contextmanager
def quiet_transformers():
    """transformers warns about the generation flags of these bare random models and shows a progress bar
    per `save_pretrained`: not news here. Restored afterwards (the bench may run inside a test session)."""
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()


# --- sizes ---------------------------------------------------------------------------------------------------

def bench_decoder(family: str, vocab: int, hidden: int, layers: int, heads: int, kv_heads: int) -> DecoderConfig:
    """A Mistral-shaped decoder (GQA, SwiGLU MLP of ~3x width); no EOS, so generation runs all N steps."""
    return DecoderConfig(family=family, vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden,
                         num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, rope_theta=1e6,
                         rms_norm_eps=1e-6 if family == "qwen2" else 1e-5, max_position_embeddings=4096,
                         attention_bias=family == "qwen2")


def bench_clip(image: int, hidden: int, layers: int, heads: int) -> VisionConfig:
    return VisionConfig(family="clip", image_size=image, patch_size=14, hidden_size=hidden,
                        intermediate_size=4 * hidden, num_layers=layers, num_heads=heads, hidden_act="quick_gelu")


@dataclasses.dataclass(frozen=True)
class DecodeSize:
    """One decoder of the decode case: a name for the table and its config."""

    name: str
    config: DecoderConfig


def decode_sizes(quick: bool) -> Tuple[DecodeSize, ...]:
    """Qwen2-shaped decoders (vocab 32000, MLP 3x hidden, 16 heads / 4 KV heads): the issue's 4 x 256 and
    24 x 1024 (355M params, 1.29 GB of float32 weights read per step) and 18 x 2048 (1.0B, 3.7 GB)."""
    def qwen2(hidden, layers, vocab=32000, heads=16, kv=4):
        return dataclasses.replace(bench_decoder("qwen2", vocab, hidden, layers, heads, kv))
    if quick:
        return (DecodeSize("tiny", qwen2(64, 2, vocab=512, heads=4, kv=2)),)
    return (DecodeSize("4x256", qwen2(256, 4)), DecodeSize("374M", qwen2(1024, 24)), DecodeSize("1B", qwen2(2048, 18)))


@dataclasses.dataclass(frozen=True)
class Sizes:
    decoders: Tuple[DecoderConfig, ...]
    generate_families: Tuple[str, ...]  # which of `decoders` also run the generation case
    prefill_shapes: Tuple[Tuple[int, int], ...]  # (batch, sequence length)
    generate_batches: Tuple[int, ...]
    prompt_len: int
    new_tokens: int
    vision: VisionConfig
    frames: int
    decode: Tuple[DecodeSize, ...] = ()
    decode_batches: Tuple[int, ...] = (1, 8)
    decode_prompt_len: int = 16
    decode_new_tokens: int = 32
    video: Optional[VideoLLaMA2Config] = None  # the whole model of the video and train cases
    video_batch: int = 1
    video_text: int = 64  # text tokens of the prompt (the placeholder included) and answer
    train_batch: int = 2


def video_model(vision: VisionConfig, decoder: DecoderConfig, frames: int = 16) -> VideoLLaMA2Config:
    """A video VideoLLaMA 2 of these parts with the STC connector (VideoLLaMA2-7B-16F's structure)."""
    return VideoLLaMA2Config(decoder=decoder, vision=vision,
                             connector=ConnectorConfig("stc_connector", vision.hidden_size, decoder.hidden_size),
                             num_frames=frames, model_type="videollama2_qwen2", vision_tower_name="clip")


# Small but not tiny: every shape runs in about a second or less on a 2-core CPU.
FULL = Sizes(
    decoders=tuple(bench_decoder(f, 8192, 512, 4, 8, 2) for f in ("mistral", "qwen2")),
    generate_families=("mistral", "qwen2"),
    prefill_shapes=((1, 128), (1, 512), (4, 128), (4, 512)),
    generate_batches=(1, 4), prompt_len=128, new_tokens=32,
    vision=bench_clip(224, 384, 4, 6), frames=8, decode=decode_sizes(False),
    # CLIP ViT-B/14 at 224 px (16 x 16 patches, 86M), 16 frames -> 512 video tokens, a 4 x 512 Qwen2 decoder.
    video=video_model(bench_clip(224, 768, 12, 12), bench_decoder("qwen2", 8192, 512, 4, 8, 2)))
# The smallest sizes that still take every code path: for the test suite. Generation is the slowest
# program to compile (the decoder twice, prefill and loop body), so it runs for one family only.
QUICK = Sizes(
    decoders=tuple(bench_decoder(f, 512, 64, 2, 4, 2) for f in ("mistral", "qwen2")),
    generate_families=("qwen2",),
    prefill_shapes=((1, 16),), generate_batches=(1,), prompt_len=16, new_tokens=4,
    vision=bench_clip(56, 32, 2, 4), frames=8, decode=decode_sizes(True), decode_batches=(1,), decode_prompt_len=8,
    decode_new_tokens=4, video=video_model(bench_clip(56, 32, 2, 4), bench_decoder("qwen2", 512, 64, 2, 4, 2)),
    video_text=16)


@dataclasses.dataclass(frozen=True)
class Runner:
    """How each side is timed, and where PyTorch runs."""

    warmup: int
    repeats: int
    torch_device: str = "cpu"

    def sync(self):
        if self.torch_device.startswith("cuda"):
            torch.cuda.synchronize()

    def tensor(self, x: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.torch_device)

    def compare(self, ours_fn: Callable, ours_args: tuple, ref: Callable):
        """Compile `ours_fn` for `ours_args`, then time it and `ref()` side by side (timing.py)."""
        compiled, compile_s = compile_jax(ours_fn, *ours_args)
        return side_by_side(lambda: compiled(*ours_args), ref, warmup=self.warmup, repeats=self.repeats,
                            sync=self.sync, compile_s=compile_s)


def _row(name: str, kind: str, shape: dict, ours: Timing, ref: Timing, agreement: dict, **extra) -> dict:
    # Other processes on the machine move the times (PyTorch's OpenMP threads most): the load says if there were.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"name": name, "kind": kind, **shape, "jax": ours.to_json(), "torch": ref.to_json(),
            "ratio": ours.median_s / ref.median_s, "agreement": agreement, "load_1min": load, **extra}


def _max_abs_diff(ours, ref) -> dict:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise AssertionError(f"output shapes differ: ours {ours.shape}, PyTorch {ref.shape}")
    return {"max_abs_diff": float(np.max(np.abs(ours - ref))), "ref_max_abs": float(np.max(np.abs(ref)))}


# --- building the pair ---------------------------------------------------------------------------------------

def randomize_(model: torch.nn.Module, seed: int = 0, device: str = "cpu"):
    """Norm scales around 1, biases small but non-zero, weights ~ N(0, 1 / fan_in); drawn on `device`
    (where the model is: a 7B model drawn on the host takes minutes)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / float(np.prod(p.shape[1:])) ** 0.5)


def decoder_pair(cfg: DecoderConfig, folder: str, runner: Runner):
    """(HF model on runner's device, our `Part`) holding the same random weights, via `folder`."""
    torch.manual_seed(0)
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf_config())
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa").eval()
    randomize_(hf)
    hf.save_pretrained(folder)
    return hf.to(runner.torch_device), vllama_jax.load(folder)


def int8_part(part):
    """The same loaded decoder with int8 weights: what `vllama_jax.load(folder, quantize="int8")` returns,
    quantized from the float32 params already in memory (a second load would hold a third copy of a 1B model)."""
    return dataclasses.replace(part, params=quantize_params(part.params, "int8", part="decoder"))


def vision_pair(cfg: VisionConfig, folder: str, runner: Runner):
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf_config())
    hf = transformers.AutoModel.from_config(hf_cfg, attn_implementation="sdpa").eval()
    randomize_(hf)
    hf.save_pretrained(folder)
    return hf.to(runner.torch_device), vllama_jax.load(folder)


# --- the cases -----------------------------------------------------------------------------------------------

def prefill(hf, ours, batch: int, seq: int, runner: Runner) -> dict:
    """Logits of every position of a full prompt, no cache."""
    ids = np.random.default_rng(1).integers(3, ours.config.vocab_size, (batch, seq)).astype(np.int32)
    mask = np.ones((batch, seq), np.int32)

    def run(params, ids, mask):
        return ours.module.apply({"params": params}, ids, attention_mask=mask.astype(bool))[0]

    ids_t, mask_t = runner.tensor(ids.astype(np.int64)), runner.tensor(mask.astype(np.int64))
    ours_t, logits, ref_t, ref = runner.compare(
        run, (ours.params, jnp.asarray(ids), jnp.asarray(mask)),
        lambda: hf(input_ids=ids_t, attention_mask=mask_t, use_cache=False).logits)
    family = ours.config.family
    return _row(f"prefill {family} b{batch} s{seq}", "prefill", {"family": family, "batch": batch, "seq": seq},
                ours_t, ref_t, {"of": "logits", **_max_abs_diff(logits, ref.float().cpu().numpy())},
                torch_attention=hf.config._attn_implementation)


def our_generate(part, max_new_tokens: int, per_layer: Optional[bool] = None) -> Callable:
    """(params, ids (B, L), mask (B, L)) -> (B, max_new_tokens) greedy ids, traceable: prefill and every
    decode step of `vllama_jax.generate` around our Decoder, no EOS (all N steps run). `per_layer`: the
    cache layout (default: what `vllama_jax.generate` picks for this backend and dtype)."""
    cfg, module = part.config, part.module
    if per_layer is None:
        per_layer = unrolled_decode(module.dtype)

    def decode_fn(params, inputs_embeds=None, input_ids=None, **kw):
        return module.apply({"params": params}, input_ids, inputs_embeds=inputs_embeds, **kw)

    def run(params, ids, mask):
        embeds = module.apply({"params": params}, ids, method=Decoder.embed)
        return generate_from_embeds(decode_fn, params, embeds, mask.astype(bool),
                                    init_cache=lambda b, n: init_cache(cfg, b, n, module.dtype, per_layer=per_layer),
                                    max_new_tokens=max_new_tokens, eos_ids=(), pad_id=0)

    return run


def generate(hf, ours, batch: int, prompt_len: int, new_tokens: int, runner: Runner) -> dict:
    """Greedy generation of `new_tokens` tokens after a `prompt_len`-token prompt, both with a KV cache."""
    ids = np.random.default_rng(2).integers(3, ours.config.vocab_size, (batch, prompt_len)).astype(np.int32)
    mask = np.ones((batch, prompt_len), np.int32)
    ids_t, mask_t = runner.tensor(ids.astype(np.int64)), runner.tensor(mask.astype(np.int64))

    def hf_generate():
        return hf.generate(input_ids=ids_t, attention_mask=mask_t, max_new_tokens=new_tokens, do_sample=False,
                           num_beams=1, use_cache=True, pad_token_id=0)

    ours_t, tokens, ref_t, ref = runner.compare(
        our_generate(ours, new_tokens), (ours.params, jnp.asarray(ids), jnp.asarray(mask)), hf_generate)
    ref = ref[:, prompt_len:].cpu().numpy()
    tokens = np.asarray(tokens)
    same = tokens == ref if tokens.shape == ref.shape else np.zeros(ref.shape, bool)
    family = ours.config.family
    return _row(f"generate {family} b{batch} +{new_tokens}", "generate",
                {"family": family, "batch": batch, "seq": prompt_len, "new_tokens": new_tokens}, ours_t, ref_t,
                {"of": "greedy tokens", "tokens_equal": bool(same.all()), "match_fraction": float(same.mean())},
                jax_tokens_per_s=batch * new_tokens / ours_t.median_s,
                torch_tokens_per_s=batch * new_tokens / ref_t.median_s)


def vision(hf, ours, frames: int, runner: Runner) -> dict:
    """The tower on the frames of one video, folded into the batch as VideoLLaMA 2 does."""
    c = ours.config
    pixels = np.random.default_rng(3).standard_normal((frames, c.num_channels, c.image_size, c.image_size))
    pixels = pixels.astype(np.float32)

    def run(params, x):
        return ours.module.apply({"params": params}, x)["last_hidden_state"]

    x = runner.tensor(pixels)
    ours_t, out, ref_t, ref = runner.compare(run, (ours.params, jnp.asarray(pixels)),
                                             lambda: hf(pixel_values=x).last_hidden_state)
    return _row(f"vision clip {frames}x{c.image_size}px", "vision",
                {"family": c.family, "batch": frames, "seq": c.num_positions}, ours_t, ref_t,
                {"of": "last_hidden_state", **_max_abs_diff(out, ref.float().cpu().numpy())},
                torch_attention=hf.config._attn_implementation)


def decode_weight_bytes(part) -> int:
    """Bytes of weights one decode step reads: every param but the embedding table, of which one row per
    token is read (int8 kernels and their scales as stored)."""
    table = part.params["embed_tokens"]["embedding"]
    total = sum(x.nbytes for x in jax.tree_util.tree_leaves(part.params))
    if part.config.tie_word_embeddings:  # the table is the LM head too: read whole
        return total
    return total - table.nbytes + table.nbytes // table.shape[0]


def decode(hf, ours, ours_int8, size: str, batch: int, prompt_len: int, new_tokens: int, runner: Runner) -> dict:
    """Greedy decode of `new_tokens` after a short prompt, ours in float32 and with int8 weights against
    transformers' generate(), timed round robin; with the memory bandwidth of the machine measured just
    before and the fraction of it each side's weight reads use."""
    ids = np.random.default_rng(4).integers(3, ours.config.vocab_size, (batch, prompt_len)).astype(np.int32)
    mask = np.ones((batch, prompt_len), np.int32)
    ids_t, mask_t = runner.tensor(ids.astype(np.int64)), runner.tensor(mask.astype(np.int64))
    f32, compile_s = compile_jax(our_generate(ours, new_tokens), ours.params, jnp.asarray(ids), jnp.asarray(mask))
    q8, compile_q = compile_jax(our_generate(ours_int8, new_tokens), ours_int8.params, jnp.asarray(ids),
                                jnp.asarray(mask))
    args = (jnp.asarray(ids), jnp.asarray(mask))

    def hf_generate():
        return hf.generate(input_ids=ids_t, attention_mask=mask_t, max_new_tokens=new_tokens, do_sample=False,
                           num_beams=1, use_cache=True, pad_token_id=0)

    bandwidth = copy_bandwidth()
    timed = round_robin({"jax": lambda: f32(ours.params, *args), "torch": hf_generate,
                         "jax_int8": lambda: q8(ours_int8.params, *args)},
                        warmup=runner.warmup, repeats=runner.repeats, sync=runner.sync)
    bandwidth = max(bandwidth, copy_bandwidth())  # before and after: the better one is the machine's
    (ours_t, tokens), (ref_t, ref), (int8_t, tokens8) = timed["jax"], timed["torch"], timed["jax_int8"]
    ours_t.compile_s, int8_t.compile_s = compile_s, compile_q
    ref = ref[:, prompt_len:].cpu().numpy()
    tokens, tokens8 = np.asarray(tokens), np.asarray(tokens8)
    same = tokens == ref if tokens.shape == ref.shape else np.zeros(ref.shape, bool)
    steps = new_tokens  # one pass over the weights per step, whatever the batch
    f32_bytes, int8_bytes = decode_weight_bytes(ours), decode_weight_bytes(ours_int8)
    tok_s = lambda t: batch * new_tokens / t.min_s
    frac = lambda nbytes, t: nbytes * steps / t.min_s / bandwidth
    cfg = ours.config
    return _row(f"decode {size} b{batch} +{new_tokens}", "decode",
                {"family": cfg.family, "size": size, "batch": batch, "seq": prompt_len, "new_tokens": new_tokens,
                 "params": int(sum(p.numel() for p in hf.parameters()))},
                ours_t, ref_t,
                {"of": "greedy tokens", "tokens_equal": bool(same.all()), "match_fraction": float(same.mean()),
                 "int8_match_fraction_vs_float32": float((tokens8 == tokens).mean())},
                jax_int8=int8_t.to_json(),
                # Rates from each side's fastest run (the figure least disturbed by other processes).
                jax_tokens_per_s=tok_s(ours_t), torch_tokens_per_s=tok_s(ref_t), int8_tokens_per_s=tok_s(int8_t),
                speedup_vs_torch=ref_t.min_s / ours_t.min_s, int8_speedup_vs_float32=ours_t.min_s / int8_t.min_s,
                int8_speedup_vs_torch=ref_t.min_s / int8_t.min_s,
                weight_bytes_per_step={"float32": f32_bytes, "int8": int8_bytes},
                copy_bandwidth_bytes_per_s=bandwidth,
                bandwidth_fraction={"jax": frac(f32_bytes, ours_t), "torch": frac(f32_bytes, ref_t),
                                    "jax_int8": frac(int8_bytes, int8_t)})


# --- the whole model: a 16-frame video prompt, and one fine-tune step ------------------------------------------

@dataclasses.dataclass
class VideoPair:
    """The PyTorch reference and our model with the same weights (ours read from the reference's tensors
    under the release names, through the table `vllama_jax.load` reads)."""

    ref: TorchVideoLLaMA2
    config: VideoLLaMA2Config
    module: VideoLLaMA2
    params: dict


def video_pair(cfg: VideoLLaMA2Config, runner: Runner) -> VideoPair:
    torch.manual_seed(0)
    tower = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(**cfg.vision.to_hf_config()),
                                               attn_implementation="sdpa")
    lm = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**cfg.decoder.to_hf_config()), attn_implementation="sdpa")
    ref = TorchVideoLLaMA2(tower, TorchSTC(cfg.connector.type, cfg.connector.in_dim, cfg.connector.out_dim), lm,
                           select_layer=cfg.vision.select_layer)
    randomize_(ref)
    state = {k: v.detach().numpy() for k, v in release_state_dict(ref).items()}
    module = VideoLLaMA2(cfg)
    params, _ = read_release(cfg, state, abstract_params(module, dummy_batch(cfg)), "the bench's reference")
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return VideoPair(ref.to(runner.torch_device).eval(), cfg, module, params)


def video_inputs(pair: VideoPair, batch: int, text: int, seed: int = 5) -> dict:
    """A prompt of `text` tokens with the video placeholder at column 4, its second half the answer."""
    c = pair.config
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, c.decoder.vocab_size, (batch, text)).astype(np.int32)
    ids[:, 4] = VIDEO_TOKEN_INDEX
    labels = np.where(np.arange(text)[None] >= text // 2, ids, IGNORE_INDEX).astype(np.int32)
    v = c.vision
    video = rng.standard_normal((batch, c.num_frames, v.num_channels, v.image_size, v.image_size)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": np.ones((batch, text), bool), "labels": labels, "video": video,
            "placeholder": 4}


def video_prefill(pair: VideoPair, batch: int, text: int, runner: Runner) -> dict:
    """Logits of a whole video prompt: tower, connector, splice and decoder, no cache."""
    x = video_inputs(pair, batch, text)
    ids_t, video_t = runner.tensor(x["input_ids"].astype(np.int64)), runner.tensor(x["video"])

    def run(params, ids, mask, video):
        return pair.module.apply({"params": params}, {"input_ids": ids, "attention_mask": mask, "video": video})["logits"]

    args = (pair.params, jnp.asarray(x["input_ids"]), jnp.asarray(x["attention_mask"]), jnp.asarray(x["video"]))
    ours_t, logits, ref_t, ref = runner.compare(run, args,
                                                lambda: pair.ref(ids_t, x["placeholder"], video_t).logits)
    c = pair.config
    return _row(f"video b{batch} {c.num_frames}f x {c.vision.image_size}px", "video",
                {"family": c.decoder.family, "batch": batch, "seq": int(logits.shape[1]), "frames": c.num_frames},
                ours_t, ref_t, {"of": "logits", **_max_abs_diff(logits, ref.float().cpu().numpy())})


def train_step(pair: VideoPair, batch: int, text: int, runner: Runner) -> dict:
    """One `video_finetune` step on the same batch: ours is the train code's step (jitted, state donated),
    PyTorch's the same work written plainly (forward with the tower under no_grad, mean token
    cross-entropy, backward, clip to norm 1, AdamW). Agreement: the first step's loss and gradient norm,
    on identical weights; the later steps keep updating both models."""
    x = video_inputs(pair, batch, text, seed=6)
    section = OptimizerSection(trainable=("connector", "decoder"), learning_rate=1e-5, warmup_ratio=0.0)
    mask = trainable_mask(pair.params, section.trainable)
    tx = make_optimizer(section, 1000, mask)
    step = make_train_step(pair.module, tx, mask, lr_schedule(section.learning_rate, 1000, 0.0))
    state = {"params": pair.params, "opt_state": tx.init(pair.params), "step": jnp.int32(0),
             "rng": jax.random.PRNGKey(0), "bad_samples": jnp.int32(0)}
    jbatch = {k: jnp.asarray(x[k]) for k in ("input_ids", "attention_mask", "labels", "video")}
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, jbatch).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def ours():
        holder["state"], metrics = compiled(holder["state"], jbatch)
        return metrics

    ref = pair.ref
    ref.train()
    trainable = [p for n, p in ref.named_parameters() if not n.startswith("tower.")]
    opt = torch.optim.AdamW(trainable, lr=section.learning_rate, betas=(section.b1, section.b2), eps=section.eps,
                            weight_decay=section.weight_decay)
    ids_t, video_t = runner.tensor(x["input_ids"].astype(np.int64)), runner.tensor(x["video"])
    labels_t = runner.tensor(x["labels"].astype(np.int64))

    def torch_step():
        with torch.inference_mode(False), torch.enable_grad():
            opt.zero_grad(set_to_none=True)
            loss = ref(ids_t, x["placeholder"], video_t, labels=labels_t).loss
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(trainable, section.max_grad_norm)
            opt.step()
        return loss.detach(), norm

    # The first step of each side on the same weights: the agreement figures.
    first = jax.device_get(ours())
    first_ref = [float(v) for v in torch_step()]
    timed = round_robin({"jax": ours, "torch": torch_step}, warmup=runner.warmup, repeats=runner.repeats,
                        sync=runner.sync)
    (ours_t, _), (ref_t, _) = timed["jax"], timed["torch"]
    ours_t.compile_s = compile_s
    ref.eval()
    c = pair.config
    loss, norm = float(first["loss"]), float(first["grad_norm"])
    return _row(f"train b{batch} {c.num_frames}f x {c.vision.image_size}px", "train",
                {"family": c.decoder.family, "batch": batch, "seq": int(x["input_ids"].shape[1]) - 1 +
                 video_tokens(c), "frames": c.num_frames}, ours_t, ref_t,
                {"of": "first step loss and grad norm", "max_abs_diff": abs(loss - first_ref[0]),
                 "ref_max_abs": abs(first_ref[0]), "loss": [loss, first_ref[0]], "grad_norm": [norm, first_ref[1]],
                 "grad_norm_rel_diff": abs(norm - first_ref[1]) / max(abs(first_ref[1]), 1e-12)},
                params_trainable=int(sum(p.numel() for p in trainable)))
