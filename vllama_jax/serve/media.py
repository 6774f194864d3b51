"""Media references of a request -> local files the pre-processing reads, never from the network.

    MediaRoot(root).resolve(url, param)  -> a path under the root (file://) or a temp file (data:)
    load_media(model, refs, root, num_frames, cache=None)
                                         -> {"video": (T, 3, H, W) | "image": (1, 3, H, W), "audio": (F, 128)}

With a `MediaCache` (media_cache.py), media already decoded for an earlier request (the same file,
unchanged, or the same data: bytes, at the same frame count) is taken from it instead of decoded again.

A `file://` URL is served only when the server has a media root and the file's real path (symlinks and
`..` resolved) lies under it; without a root every `file://` URL is refused. A `data:` URL
(`data:video/mp4;base64,...`, or OpenAI's `input_audio` {data, format}) is decoded into a private
temporary file, read, then deleted. `http(s)://` URLs are refused with a message that says so: the
server never fetches anything. Every error is a `RequestError` naming the request field.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import tempfile
import urllib.parse
from typing import Optional

from vllama_jax.preprocess.audio import audio_features
from vllama_jax.preprocess.media_cache import file_identity
from vllama_jax.preprocess.processor import Processor
from vllama_jax.serve.errors import RequestError

# Suffixes for data: URLs, so the decoders see a familiar file name (PyAV probes the content anyway).
_SUFFIXES = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
             "image/gif": ".gif", "image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp",
             "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/mpeg": ".mp3",
             "audio/mp3": ".mp3", "audio/flac": ".flac", "audio/ogg": ".ogg"}
AUDIO_FORMATS = {"wav": ".wav", "mp3": ".mp3", "flac": ".flac", "ogg": ".ogg", "m4a": ".m4a"}


@dataclasses.dataclass
class MediaRef:
    """One media part of a request: kind "video" | "image" | "audio", its URL (or base64 data with a
    format, for `input_audio`), and the request field that held it (for errors)."""
    kind: str
    url: Optional[str]
    param: str
    data: Optional[str] = None
    format: Optional[str] = None
    frames: Optional[list] = None  # kind "frames": [(url, param)], the images that are one video's frames


class MediaRoot:
    """The folder `file://` URLs may read from (None: refuse them all)."""

    def __init__(self, root: Optional[str]):
        self.root = os.path.realpath(root) if root else None
        if self.root is not None and not os.path.isdir(self.root):
            raise ValueError(f"--media-root {root}: not a folder")

    def file_path(self, url: str, param: str) -> str:
        if self.root is None:
            raise RequestError("file:// URLs are disabled on this server (start it with --media-root DIR to serve "
                               "files under DIR); send the media as a data: URL instead", param)
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise RequestError(f"file:// URL with host '{parsed.netloc}': use file:///absolute/path (three slashes)",
                               param)
        path = urllib.parse.unquote(parsed.path)
        if not os.path.isabs(path):
            raise RequestError("a file:// URL needs an absolute path", param)
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.root]) != self.root:
            raise RequestError(f"{path} is outside the server's media root (symlinks and '..' are resolved first)",
                               param, status=403, type="permission_error")
        if not os.path.isfile(real):
            raise RequestError(f"{path}: no such file under the media root", param, status=404, type="not_found_error")
        if not os.access(real, os.R_OK):
            raise RequestError(f"{path}: not readable", param, status=403, type="permission_error")
        return real


def _decode_b64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"invalid base64 data ({e})", param) from None


class Resolved:
    """A context manager around a local path; deletes it afterwards when it was a temporary file."""

    def __init__(self, path: str, temporary: bool):
        self.path, self.temporary = path, temporary

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        if self.temporary:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _temp_file(payload: bytes, suffix: str) -> Resolved:
    fd, path = tempfile.mkstemp(prefix="vllama-serve-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
    return Resolved(path, True)


def resolve(ref: MediaRef, root: MediaRoot) -> Resolved:
    """A MediaRef -> a local file (a context manager giving its path)."""
    if ref.data is not None:  # OpenAI's input_audio {data, format}
        fmt = (ref.format or "wav").lower()
        if fmt not in AUDIO_FORMATS:
            raise RequestError(f"audio format '{ref.format}' is not one of {sorted(AUDIO_FORMATS)}",
                               ref.param.rsplit(".", 1)[0] + ".format")
        return _temp_file(_decode_b64(ref.data, ref.param), AUDIO_FORMATS[fmt])
    url = ref.url
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "file":
        return Resolved(root.file_path(url, ref.param), False)
    if scheme == "data":
        head, sep, payload = url[5:].partition(",")
        if not sep or not head.endswith(";base64"):
            raise RequestError("a data: URL must be base64: data:<mime type>;base64,<data>", ref.param)
        mime = head[: -len(";base64")].lower()
        return _temp_file(_decode_b64(payload, ref.param), _SUFFIXES.get(mime, ""))
    if scheme in ("http", "https", "ftp", "s3", "gs"):
        raise RequestError(f"this server does not fetch {scheme}:// URLs (no network access); send the media as "
                           "a data: URL, or as a file:// path under the server's --media-root", ref.param)
    raise RequestError(f"unsupported URL '{url[:60]}': expected a file:// or data: URL", ref.param)


def cache_key(ref: MediaRef, root: MediaRoot, num_frames: Optional[int]) -> Optional[tuple]:
    """What identifies a media part's decoded arrays: its content (a file's real path, size, modification
    time and inode; a payload's SHA-256), its kind and the frame count asked for. None: not cached (a URL
    `resolve` refuses, so its error is raised there; frames sent as separate images)."""
    if ref.kind == "frames":
        return None
    if ref.data is not None:
        return (ref.kind, num_frames, "data", (ref.format or "wav").lower(),
                hashlib.sha256(ref.data.encode()).hexdigest())
    scheme = ref.url.split(":", 1)[0].lower() if ":" in ref.url else ""
    if scheme == "data":
        return (ref.kind, num_frames, "data", hashlib.sha256(ref.url.encode()).hexdigest())
    if scheme == "file":
        return (ref.kind, num_frames, "file") + file_identity(root.file_path(ref.url, ref.param))
    return None


def load_media(model, refs, root: MediaRoot, num_frames: Optional[int] = None, cache=None) -> dict:
    """Decode a request's media with the model's own pre-processing (`model.load_media` / Processor):
    -> {"video": (T, 3, H, W)} or {"image": (1, 3, H, W)}, plus {"audio": (F, 128)}. `cache`: a
    MediaCache to read decoded media from and add it to (None: decode every time)."""
    out = {}
    processor = model.processor
    if processor is not None and num_frames is not None and num_frames != processor.num_frames:
        processor = Processor(processor.config, num_frames=num_frames,
                              aspect_ratio="pad" if processor.aspect_ratio == "pad" else None)
    for ref in refs:
        if ref.kind == "frames":
            out["video"] = _frames_video(ref, root, processor)
            continue
        key = cache_key(ref, root, num_frames) if cache is not None else None
        if key is None:
            out[ref.kind] = _decode(ref, root, processor)
        else:
            out[ref.kind] = cache.get_or_load(key, lambda: _decode(ref, root, processor))
    return out


def _decode(ref: MediaRef, root: MediaRoot, processor):
    with resolve(ref, root) as path:
        try:
            if ref.kind == "video":
                return processor.video(path)
            if ref.kind == "image":
                return processor.image(path)
            return audio_features(path)
        except RequestError:
            raise
        except Exception as e:  # unreadable / corrupt media: the client's error, named by field
            msg = str(e).replace(path, "the file") if ref.url is None or not ref.url.startswith("file:") else str(e)
            raise RequestError(f"cannot read the {ref.kind}: {type(e).__name__}: {msg}", ref.param) from None


def _frames_video(ref: MediaRef, root: MediaRoot, processor):
    """Images that are the frames of one video -> (T, 3, H, W), through a folder of frames, as
    `model.chat(video=folder)` reads one."""
    import shutil

    folder = tempfile.mkdtemp(prefix="vllama-serve-frames-")
    try:
        for i, (url, param) in enumerate(ref.frames):
            with resolve(MediaRef("image", url, param), root) as path:
                shutil.copyfile(path, os.path.join(folder, f"{i:06d}{os.path.splitext(path)[1] or '.png'}"))
        try:
            return processor.video(folder)
        except Exception as e:
            raise RequestError(f"cannot read the images as video frames: {type(e).__name__}: "
                               f"{str(e).replace(folder, 'the frames')}", ref.param) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
