"""The user-facing VideoLLaMA 2 object: `vllama_jax.load(path)` returns one.

    model = vj.load("VideoLLaMA2-7B")                       # config, params, tokenizer, processor (loading.py)
    model.chat("What happens?", video="clip.mp4")           # -> str
    chat = model.new_chat(video="clip.mp4"); chat.ask("..."); chat.ask("and then?")   # multi-turn
    model.generate(input_ids, attention_mask, media=[{"video": frames}], max_new_tokens=32)  # (B, 32) ids
    model.forward(batch)                                    # logits, spliced embeds / mask / labels

Everything that runs on the accelerator is one jitted function per shape bucket (prompt lengths are
padded up to a multiple of `length_bucket`), and compiled programs persist on disk
(`$VLLAMA_JAX_CACHE`, default ~/.cache/vllama_jax/jit), so a second process starts fast.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vllama_jax import config as C
from vllama_jax.checkpoints.export import save_videollama2
from vllama_jax.generate import check_context, generate_from_embeds
from vllama_jax.models.decoder import decode_layout as default_decode_layout
from vllama_jax.models.decoder import fuse_projections, init_cache, pack_kernels, split_layers, stack_layers
from vllama_jax.models.sequence import media_tokens
from vllama_jax.models.videollama2 import VideoLLaMA2
from vllama_jax.preprocess.audio import audio_features
from vllama_jax.preprocess.conversation import build_prompt, tokenize_multimodal

log = logging.getLogger(__name__)


def enable_compilation_cache(path: Optional[str] = None):
    path = path or os.environ.get("VLLAMA_JAX_CACHE", os.path.expanduser("~/.cache/vllama_jax/jit"))
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except Exception as e:  # a read-only home must not stop inference
        log.warning("no persistent compilation cache (%s)", e)


def media_batch(samples: Sequence[Optional[dict]], config: C.VideoLLaMA2Config, num_frames: Optional[int] = None):
    """Per-sample media -> the model's fixed-shape batch arrays.

    samples[i]: None (text only) or a dict with any of "video" (T, 3, H, W), "image" ((1,) 3, H, W) (repeated to
    T frames, as the original does), "audio" (F, 128) fbank. All audio in one batch must have the same F.
    """
    t = num_frames or config.num_frames
    b = len(samples)
    out: Dict[str, np.ndarray] = {}
    if config.vision is not None:
        v = config.vision
        video = np.zeros((b, t, v.num_channels, v.image_size, v.image_size), np.float32)
        has_v = np.zeros((b,), bool)
        for i, s in enumerate(samples):
            s = s or {}
            x = s.get("video")
            if x is None and s.get("image") is not None:
                img = np.asarray(s["image"], np.float32)
                x = np.broadcast_to(img.reshape((1,) + img.shape[-3:]), (t,) + img.shape[-3:])
            if x is not None:
                x = np.asarray(x, np.float32)
                if x.shape[0] != t or x.shape[1:] != video.shape[2:]:
                    raise ValueError(f"sample {i}: video/image of shape {x.shape}, the model expects "
                                     f"({t}, {v.num_channels}, {v.image_size}, {v.image_size})")
                video[i], has_v[i] = x, True
        out["video"], out["has_video"] = video, has_v
    audios = [None if s is None else s.get("audio") for s in samples]
    if any(a is not None for a in audios):
        if config.audio is None:
            raise ValueError("this model has no audio tower; it cannot take audio")
        frames = {np.shape(a)[0] for a in audios if a is not None}
        if len(frames) != 1:
            raise ValueError(f"all audio in one batch needs the same number of fbank frames, got {sorted(frames)}")
        f = frames.pop()
        audio = np.zeros((b, f, 128), np.float32)
        has_a = np.zeros((b,), bool)
        for i, a in enumerate(audios):
            if a is not None:
                audio[i], has_a[i] = a, True
        out["audio"], out["has_audio"] = audio, has_a
    elif config.audio is not None:
        # No sample has sound: a silent stand-in, marked absent, one BEATs patch long (the demo's BEATs
        # takes 64-frame patches).
        f = max(16, config.audio.input_patch_size)
        out["audio"], out["has_audio"] = np.zeros((b, f, 128), np.float32), np.zeros((b,), bool)
    return out


def _bucket(n: int, size: int) -> int:
    return -(-n // size) * size


class VideoLLaMA2Model:
    """Config, params, tokenizer and processor of one VideoLLaMA 2 checkpoint, with jitted entry points."""

    def __init__(self, config: C.VideoLLaMA2Config, params, tokenizer=None, processor=None, dtype=jnp.float32,
                 path: Optional[str] = None, length_bucket: int = 64, max_context: Optional[int] = None,
                 unused: Optional[Dict[str, np.ndarray]] = None, vision_folder: Optional[str] = None,
                 decode_layout: Optional[str] = None):
        """A loaded model (`vllama_jax.load` builds one). `unused`: checkpoint tensors the model never reads
        (SigLIP's pooling head), kept so that `save` writes the keys the original writes. `decode_layout`:
        how the decoder's layers are held for generation (models/decoder.py; default: this backend's)."""
        self.config = config
        self.decode_layout = decode_layout or default_decode_layout(dtype)
        if self.decode_layout in ("split", "packed"):
            params = {**params, "decoder": fuse_projections(split_layers(params["decoder"]))}
        if self.decode_layout == "packed":
            params = {**params, "decoder": pack_kernels(params["decoder"])}
        self.params = params
        self.tokenizer = tokenizer
        self.processor = processor
        self.dtype = dtype
        self.path = path
        self.length_bucket = length_bucket
        # RoPE runs past max_position_embeddings, but quality is only known within it: opt in to more.
        self.max_context = max_context or config.decoder.max_position_embeddings
        self.unused = dict(unused or {})
        self.vision_folder = vision_folder
        self.module = VideoLLaMA2(config, dtype=dtype, param_dtype=dtype)
        self._jit_cache: Dict[tuple, Callable] = {}
        self._stream_target: Optional[Callable] = None

    def stacked_params(self):
        """The params with the decoder's layers stacked and its projections apart: the layout of training,
        export and the checkpoint's key map, whatever `decode_layout` holds (split layers come back as
        numpy arrays on the host)."""
        return {**self.params, "decoder": stack_layers(self.params["decoder"])}

    def save(self, folder: str, dtype=np.float32) -> str:
        """This model in the release layout (checkpoints/export.py), loadable by `vllama_jax.load` and by
        the original PyTorch code."""
        return save_videollama2(folder, self.config, self.stacked_params(), self.tokenizer, dtype=dtype,
                                unused=self.unused, vision_folder=self.vision_folder)

    # --- forward -----------------------------------------------------------------------------------------
    def _jitted(self, name: str, fn: Callable, **static):
        key = (name,) + tuple(sorted(static.items()))
        if key not in self._jit_cache:
            self._jit_cache[key] = jax.jit(functools.partial(fn, **static))
        return self._jit_cache[key]

    def forward(self, batch: dict) -> Dict[str, np.ndarray]:
        """The training-layout forward of the original: see models/videollama2.py for the batch."""
        batch = {k: jnp.asarray(v) for k, v in batch.items() if v is not None}
        f = self._jitted("forward", lambda p, b: self.module.apply({"params": p}, b))
        return jax.tree_util.tree_map(np.asarray, f(self.params, batch))

    def encode(self, batch: dict) -> Dict[str, np.ndarray]:
        """Intermediate features: vision tower, connector and audio projector outputs."""
        m = self.module

        def run(p, b):
            out = {}
            if "video" in b:
                v = b["video"]
                t = v.shape[1]
                feats = m.apply({"params": p}, v.reshape((-1,) + v.shape[2:]),
                                method=lambda mod, x: mod.vision.features(x))
                out["vision_features"] = feats
                out["projector_out"] = m.apply({"params": p}, feats.reshape((v.shape[0], t) + feats.shape[1:]),
                                               method=lambda mod, x: mod.connector(x))
            if "audio" in b:
                out["audio_projector_out"] = m.apply({"params": p}, b["audio"],
                                                     method=lambda mod, x: mod.encode_audio(x))
            return out

        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        return jax.tree_util.tree_map(np.asarray, self._jitted("encode", run)(self.params, batch))

    # --- generation --------------------------------------------------------------------------------------
    def _generate_fn(self, params, batch, rng, *, max_new_tokens, temperature, top_k, top_p, stream, stop_at_eos):
        cfg = self.config.decoder
        prep = self.module.apply({"params": params}, batch, method=VideoLLaMA2.prepare_inputs)

        def decode_fn(p, inputs_embeds=None, input_ids=None, **kw):
            return self.module.apply({"params": p}, inputs_embeds, input_ids, method=VideoLLaMA2.decode, **kw)

        eos = cfg.eos_ids if stop_at_eos else ()
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
        return generate_from_embeds(
            decode_fn, params, prep["inputs_embeds"], prep["attention_mask"],
            init_cache=lambda b, n: init_cache(cfg, b, n, self.dtype, per_layer=self.decode_layout != "scan"),
            max_new_tokens=max_new_tokens,
            eos_ids=eos, pad_id=pad, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng,
            stream=self._stream_dispatch if stream else None)

    def _stream_dispatch(self, step, tokens):
        # One fixed host callback per compiled program; the target changes per call without recompiling.
        if self._stream_target is not None:
            self._stream_target(step, tokens)

    def generate(self, input_ids, attention_mask=None, media=None, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                 stream: Optional[Callable] = None, stop_at_eos: bool = True) -> np.ndarray:
        """New tokens only, (B, max_new_tokens) int; each row stops at EOS (later slots hold the pad id).

        input_ids (B, L) with one placeholder per sample that has media (rows may be left- or right-padded:
        `attention_mask` says which tokens are real); media: a list of per-sample dicts (see `media_batch`)
        or an already-built dict of batch arrays.
        """
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask, bool).reshape(ids.shape)
        b = ids.shape[0]
        if media is None or isinstance(media, (list, tuple)):
            media = media_batch(list(media) if media is not None else [None] * b, self.config)
        # Pad the text to a length bucket (left, masked) so similar prompts share one compiled program.
        length = _bucket(ids.shape[1], self.length_bucket)
        if length > ids.shape[1]:
            pad = length - ids.shape[1]
            ids = np.concatenate([np.zeros((b, pad), ids.dtype), ids], axis=1)
            mask = np.concatenate([np.zeros((b, pad), bool), mask], axis=1)
        fbank_frames = media["audio"].shape[1] if "audio" in media and self.config.audio is not None else None
        real = int(mask.sum(axis=1).max()) + media_tokens(self.config, "video" in media, fbank_frames)
        check_context(real, max_new_tokens, self.max_context)
        batch = {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask),
                 **{k: jnp.asarray(v) for k, v in media.items()}}
        f = self._jitted("generate", self._generate_fn, max_new_tokens=max_new_tokens, temperature=float(temperature),
                         top_k=int(top_k), top_p=float(top_p), stream=stream is not None,
                         stop_at_eos=bool(stop_at_eos))
        self._stream_target = stream
        try:
            return np.asarray(f(self.params, batch, jax.random.PRNGKey(seed)))
        finally:
            self._stream_target = None

    # --- chat --------------------------------------------------------------------------------------------
    def load_media(self, video=None, image=None, audio=None, start=None, end=None) -> dict:
        """Files -> pre-processed arrays: {"video": (T,3,H,W)} / {"image": (1,3,H,W)} (+ {"audio": (F,128)}).
        `audio=True` with a video takes the video's own sound track (silence when it has none)."""
        out = {}
        if video is not None or image is not None:
            if self.processor is None:
                raise ValueError("this model has no vision tower/processor; pass audio only")
            if video is not None:
                out["video"] = self.processor.video(video, start=start, end=end)
            else:
                out["image"] = self.processor.image(image)
        if audio is not None and audio is not False:
            if self.config.audio is None:
                raise ValueError("this model has no audio tower (it is a video-only release)")
            src = video if audio is True else audio
            out["audio"] = audio_features(src)
        return out

    def new_chat(self, video=None, image=None, audio=None, start=None, end=None, system: Optional[str] = None):
        return ChatSession(self, self.load_media(video, image, audio, start, end), system)

    def chat(self, question: str, video=None, image=None, audio=None, max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             stream: Optional[Callable[[str], None]] = None, start=None, end=None) -> str:
        """One question about a video / image / audio file (or none): the answer as text."""
        return self.new_chat(video, image, audio, start, end).ask(
            question, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
            stream=stream)


class ChatSession:
    """A multi-turn conversation about one piece of media: the first user turn carries the modal tag."""

    def __init__(self, model: VideoLLaMA2Model, media: dict, system: Optional[str] = None):
        self.model = model
        self.media = media
        self.messages: List[dict] = []
        self.system = system
        if "video" in media:
            self.modal = "video"  # an audio-visual sample also uses the one <video> tag
        elif "image" in media:
            self.modal = "image"
        elif "audio" in media:
            self.modal = "audio"
        else:
            self.modal = None

    def ask(self, question: str, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
            top_k: int = 0, seed: int = 0, stream: Optional[Callable[[str], None]] = None) -> str:
        tok = self.model.tokenizer
        if tok is None:
            raise ValueError(f"{self.model.path}: no tokenizer files in the checkpoint folder; chat needs one")
        self.messages.append({"role": "user", "content": question})
        prompt = build_prompt(self.messages, self.model.config.decoder.family, tok, self.modal, system=self.system)
        ids = np.asarray(tokenize_multimodal(prompt, tok), np.int64)[None]
        on_tokens = None
        if stream is not None:
            on_tokens = _TextStreamer(tok, stream, self.model.config.decoder.eos_ids)
        out = self.model.generate(ids, media=[self.media or None], max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stream=on_tokens)
        answer_ids = until_eos(out[0], self.model.config.decoder.eos_ids)
        answer = tok.decode(answer_ids, skip_special_tokens=True).strip()
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def until_eos(ids, eos_ids) -> List[int]:
    """The generated ids before the first EOS."""
    out = []
    for t in ids.tolist():
        if t in eos_ids:
            break
        out.append(t)
    return out


class _TextStreamer:
    """Host callback for `generate(stream=...)`: decodes row 0 incrementally and passes new text on."""

    def __init__(self, tokenizer, emit: Callable[[str], None], eos_ids):
        self.tokenizer, self.emit, self.eos = tokenizer, emit, set(eos_ids)
        self.ids: List[int] = []
        self.printed = 0
        self.stopped = False

    def __call__(self, step, tokens):
        t = int(np.asarray(tokens)[0])
        if self.stopped or t in self.eos:
            self.stopped = True
            return
        self.ids.append(t)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.printed and not text.endswith("\ufffd"):
            self.emit(text[self.printed:])
            self.printed = len(text)
