"""OpenAI chat-completion requests -> what the model takes, and the response / stream-chunk bodies back.

    parse_request(body: dict, info: ModelInfo) -> ChatRequest     (raises RequestError naming the field)

Accepted (vLLM's OpenAI-compatible schema for multimodal models):

    {"model": "...", "messages": [{"role": "system" | "user" | "assistant", "content": str | [part, ...]}],
     "max_tokens" | "max_completion_tokens": int, "temperature", "top_p", "top_k", "seed", "stop": str | [str],
     "stream": bool, "stream_options": {"include_usage": bool},
     "media_io_kwargs": {"video": {"num_frames": int}},              vLLM's per-request media options
     "mm_processor_kwargs": {"use_audio_in_video": bool}}           an audio-visual model hears the video too

    part: {"type": "text", "text": str}
          {"type": "image_url", "image_url": {"url": URL}}       URL: file:///abs/path (under --media-root)
          {"type": "video_url", "video_url": {"url": URL}}            or data:<mime>;base64,<data>
          {"type": "audio_url", "audio_url": {"url": URL}}
          {"type": "input_audio", "input_audio": {"data": base64, "format": "wav" | "mp3" | ...}}

Several image_url parts are the frames of one video (lmms-eval's OpenAI-compatible models send a video
so), sampled to the model's frame count as a folder of frames is.
VideoLLaMA 2 takes one video or image (and, audio-visual models, one sound) per conversation: the
media go where `model.chat` puts them (the first user turn), whichever user message carries them. Text
parts of one message are joined with newlines.
"""
from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Any, List, Optional

from vllama_jax.serve.engine import SamplingParams
from vllama_jax.serve.errors import RequestError
from vllama_jax.serve.media import MediaRef

MAX_STOP = 4
MAX_FRAMES = 128
_IGNORED_IF_DEFAULT = {"frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "n": 1,
                       "top_logprobs": None, "logit_bias": None, "tools": None, "tool_choice": None}


@dataclasses.dataclass
class ModelInfo:
    """What request validation needs to know about the served model."""
    name: str
    has_vision: bool
    has_audio: bool
    max_len: int
    default_max_tokens: int = 256


@dataclasses.dataclass
class ChatRequest:
    messages: List[dict]  # [{"role", "content": str}] in build_prompt's form
    media: List[MediaRef]  # at most one video/image and one audio
    params: SamplingParams
    max_tokens_given: bool
    stream: bool = False
    include_usage: bool = False
    num_frames: Optional[int] = None
    model: str = ""

    @property
    def modal(self) -> Optional[str]:
        kinds = {m.kind for m in self.media}
        return ("video" if kinds & {"video", "frames"} else "image" if "image" in kinds else
                "audio" if kinds else None)


def _type_name(x) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(x), "a number")


def _get(obj: dict, key: str, kind, param: str, default=None, required=False):
    if key not in obj or obj[key] is None:
        if required:
            raise RequestError(f"'{param}' is required", param)
        return default
    v = obj[key]
    ok = {"int": lambda x: isinstance(x, int) and not isinstance(x, bool),
          "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
          "bool": lambda x: isinstance(x, bool), "str": lambda x: isinstance(x, str),
          "dict": lambda x: isinstance(x, dict), "list": lambda x: isinstance(x, list)}[kind](v)
    if not ok:
        want = {"int": "an integer", "number": "a number", "bool": "a boolean", "str": "a string",
                "dict": "an object", "list": "an array"}[kind]
        raise RequestError(f"'{param}' must be {want}, got {_type_name(v)}", param)
    return v


def _url(part: dict, key: str, param: str) -> str:
    v = part.get(key)
    if isinstance(v, str):  # some clients send the URL string directly
        return v
    if not isinstance(v, dict):
        raise RequestError(f"'{param}.{key}' must be an object with a 'url'", f"{param}.{key}")
    return _get(v, "url", "str", f"{param}.{key}.url", required=True)


def _content(msg: dict, i: int, media: List[MediaRef]) -> str:
    param = f"messages[{i}].content"
    content = msg.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"'{param}' must be a string or an array of content parts, got {_type_name(content)}",
                           param)
    texts = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise RequestError(f"'{p}' must be an object with a 'type'", p)
        kind = _get(part, "type", "str", f"{p}.type", required=True)
        if kind == "text":
            texts.append(_get(part, "text", "str", f"{p}.text", required=True))
            continue
        if msg.get("role") != "user" and kind in ("image_url", "video_url", "audio_url", "input_audio"):
            raise RequestError(f"media parts belong in user messages, not in a '{msg.get('role')}' message", f"{p}.type")
        if kind in ("image_url", "video_url", "audio_url"):
            media.append(MediaRef(kind[:-4], _url(part, kind, p), f"{p}.{kind}.url"))
        elif kind == "input_audio":
            audio = _get(part, "input_audio", "dict", f"{p}.input_audio", required=True)
            data = _get(audio, "data", "str", f"{p}.input_audio.data", required=True)
            fmt = _get(audio, "format", "str", f"{p}.input_audio.format", default="wav")
            media.append(MediaRef("audio", None, f"{p}.input_audio.data", data=data, format=fmt))
        else:
            raise RequestError(f"content part type '{kind}' is not one of text, image_url, video_url, audio_url, "
                               "input_audio", f"{p}.type")
    return "\n".join(texts)


def _messages(body: dict, media: List[MediaRef]) -> List[dict]:
    msgs = _get(body, "messages", "list", "messages", required=True)
    if not msgs:
        raise RequestError("'messages' must hold at least one message", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RequestError(f"'messages[{i}]' must be an object with 'role' and 'content'", f"messages[{i}]")
        role = _get(m, "role", "str", f"messages[{i}].role", required=True)
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise RequestError(f"role '{role}' is not one of system, user, assistant", f"messages[{i}].role")
        if role == "system" and i != 0:
            raise RequestError("a system message may only come first", f"messages[{i}].role")
        want = "user" if (len(out) - (out[0]["role"] == "system" if out else 0)) % 2 == 0 else "assistant"
        if role != "system" and role != want:
            raise RequestError(f"messages must alternate user / assistant after an optional system message; "
                               f"expected '{want}' here", f"messages[{i}].role")
        out.append({"role": role, "content": _content(m, i, media)})
    if out[-1]["role"] != "user":
        raise RequestError("the last message must be a user message (the one to answer)",
                           f"messages[{len(out) - 1}].role")
    return out


def parse_request(body: Any, info: ModelInfo) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {_type_name(body)}", None)
    model = _get(body, "model", "str", "model", default=info.name)
    if model != info.name:
        raise RequestError(f"the model '{model}' does not exist; this server serves '{info.name}'", "model",
                           status=404, type="not_found_error", code="model_not_found")
    for key, default in _IGNORED_IF_DEFAULT.items():
        if key in body and body[key] and body[key] != default:  # absent, null, 0, false, empty: the default
            raise RequestError(f"'{key}' is not supported by this server (only {default!r})", key)

    media: List[MediaRef] = []
    messages = _messages(body, media)
    visual = [m for m in media if m.kind in ("video", "image")]
    audio = [m for m in media if m.kind == "audio"]
    if len(visual) > 1 and all(m.kind == "image" for m in visual):
        # Several images: the frames of one video (what lmms-eval's OpenAI-compatible models send), sampled
        # as the original samples a folder of frames.
        frames = MediaRef("frames", None, visual[0].param, frames=[(m.url, m.param) for m in visual])
        media = [m for m in media if m.kind == "audio"] + [frames]
        visual = [frames]
    if len(visual) > 1:
        raise RequestError("VideoLLaMA 2 takes one video or image per conversation (several images are the "
                           "frames of one video)", visual[1].param)
    if len(audio) > 1:
        raise RequestError("VideoLLaMA 2 takes one audio input per conversation", audio[1].param)
    if visual and not info.has_vision:
        raise RequestError("this model has no vision tower; it takes no video or image", visual[0].param)
    mm = _get(body, "mm_processor_kwargs", "dict", "mm_processor_kwargs", default={})
    audio_in_video = _get(mm, "use_audio_in_video", "bool", "mm_processor_kwargs.use_audio_in_video", default=False)
    if audio_in_video:
        if not visual or visual[0].kind != "video":  # a video file's own sound track
            raise RequestError("use_audio_in_video needs a video_url part", "mm_processor_kwargs.use_audio_in_video")
        if audio:
            raise RequestError("use_audio_in_video with a separate audio part: send one of them",
                               "mm_processor_kwargs.use_audio_in_video")
        audio = [MediaRef("audio", visual[0].url, visual[0].param)]
        media.append(audio[0])
    if audio and not info.has_audio:
        raise RequestError("this model has no audio tower (a video-only checkpoint); it takes no audio",
                           "mm_processor_kwargs.use_audio_in_video" if audio_in_video else audio[0].param)

    num_frames = None
    io = _get(body, "media_io_kwargs", "dict", "media_io_kwargs", default={})
    video_io = _get(io, "video", "dict", "media_io_kwargs.video", default={})
    num_frames = _get(video_io, "num_frames", "int", "media_io_kwargs.video.num_frames")
    if num_frames is not None and not 1 <= num_frames <= MAX_FRAMES:
        raise RequestError(f"'media_io_kwargs.video.num_frames' must be in [1, {MAX_FRAMES}]",
                           "media_io_kwargs.video.num_frames")

    max_tokens = _get(body, "max_completion_tokens", "int", "max_completion_tokens")
    mt_param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, mt_param = _get(body, "max_tokens", "int", "max_tokens"), "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise RequestError(f"'{mt_param}' must be at least 1", mt_param)
    # Greedy by default, as `model.chat` and the original's inference (OpenAI's own default is 1).
    temperature = float(_get(body, "temperature", "number", "temperature", default=0.0))
    if not 0.0 <= temperature <= 2.0:
        raise RequestError("'temperature' must be in [0, 2]", "temperature")
    top_p = float(_get(body, "top_p", "number", "top_p", default=1.0))
    if not 0.0 < top_p <= 1.0:
        raise RequestError("'top_p' must be in (0, 1]", "top_p")
    top_k = _get(body, "top_k", "int", "top_k", default=0)
    if top_k < -1:
        raise RequestError("'top_k' must be >= 0 (0 or -1: off)", "top_k")
    seed = _get(body, "seed", "int", "seed")
    if seed is not None and not 0 <= seed < 2 ** 32:
        raise RequestError("'seed' must be in [0, 2**32)", "seed")
    if seed is None:
        seed = secrets.randbits(31) if temperature > 0 else 0
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP:
        raise RequestError(f"'stop' must be a non-empty string or an array of at most {MAX_STOP} of them", "stop")
    stream = _get(body, "stream", "bool", "stream", default=False)
    opts = _get(body, "stream_options", "dict", "stream_options", default={})
    include_usage = _get(opts, "include_usage", "bool", "stream_options.include_usage", default=False)

    params = SamplingParams(max_tokens=max_tokens or info.default_max_tokens, temperature=temperature, top_p=top_p,
                            top_k=max(top_k, 0), seed=seed, stop=tuple(stop))
    return ChatRequest(messages, media, params, max_tokens is not None, stream, include_usage, num_frames, model)


# --- responses ----------------------------------------------------------------------------------------------
def new_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(rid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
               created: Optional[int] = None) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created or int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(rid: str, model: str, created: int, delta: Optional[dict], finish_reason: Optional[str] = None,
          usage_: Optional[dict] = None) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                         "logprobs": None}]
    out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out
