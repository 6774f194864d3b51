"""A parsed request -> the engine's `Prompt`: media decoded, the chat template applied, tokens counted.

    prepare(model, request, root, max_len, tokenizer_lock, media_cache) -> Prompt(ids (L,), media, n)

Exactly `model.chat`'s pre-processing: `model.processor` (or the same processor at the request's
`num_frames`) and `audio_features` for the media, `build_prompt` with the modal tag in the first user turn
and the family's system message unless the request starts with its own, `tokenize_multimodal`. `n`, the
prompt's length in the decoder (text tokens without the placeholder + video/image + audio tokens), is
the `usage.prompt_tokens` of the response and what must fit the slot with `max_tokens`.
"""
from __future__ import annotations

import threading
from typing import Optional

import numpy as np

from vllama_jax.config import MODAL_TOKEN_INDEX
from vllama_jax.models.sequence import FBANK_FRAMES, media_tokens
from vllama_jax.preprocess.conversation import build_prompt, tokenize_multimodal
from vllama_jax.serve.engine import Prompt
from vllama_jax.serve.errors import RequestError
from vllama_jax.serve.media import MediaRoot, load_media
from vllama_jax.serve.openai_schema import ChatRequest


def prepare(model, req: ChatRequest, root: MediaRoot, max_len: int,
            tokenizer_lock: Optional[threading.Lock] = None, media_cache=None) -> Prompt:
    lock = tokenizer_lock or threading.Lock()
    tok = model.tokenizer
    with lock:
        try:
            text = build_prompt(req.messages, model.config.decoder.family, tok, req.modal)
        except Exception as e:  # the chat template refused the conversation
            raise RequestError(f"the chat template cannot render these messages: {e}", "messages") from None
        ids = np.asarray(tokenize_multimodal(text, tok), np.int64)
    placeholders = int(np.isin(ids, list(MODAL_TOKEN_INDEX.values())).sum())
    if placeholders != (1 if req.media else 0):
        raise RequestError("the message text holds a modal tag (<video>, <image>, <audio>); send media as content "
                           "parts instead", "messages")
    has_video = any(m.kind in ("video", "image", "frames") for m in req.media)
    fbank_frames = FBANK_FRAMES if any(m.kind == "audio" for m in req.media) else None  # 30 s, always
    n = len(ids) - placeholders + media_tokens(model.config, has_video, fbank_frames, req.num_frames)
    if n + 1 > max_len:
        raise RequestError(f"the prompt is {n} tokens (text plus media features), over this server's context of "
                           f"{max_len} positions; shorten the messages or send fewer frames", "messages",
                           code="context_length_exceeded")
    p = req.params
    if req.max_tokens_given and n + p.max_tokens > max_len:
        raise RequestError(f"the prompt of {n} tokens + max_tokens {p.max_tokens} exceeds this server's context of "
                           f"{max_len} positions", "max_tokens", code="context_length_exceeded")
    p.max_tokens = min(p.max_tokens, max_len - n)
    media = load_media(model, req.media, root, req.num_frames, media_cache) if req.media else None
    if media is not None and "audio" in media and media["audio"].shape[0] != FBANK_FRAMES:
        raise RequestError(f"audio of {media['audio'].shape[0]} fbank frames, expected {FBANK_FRAMES}",
                           req.media[-1].param)
    return Prompt(ids, media, n, req.num_frames)
