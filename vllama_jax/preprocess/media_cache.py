"""A cache of pre-processed media: a file asked about again is not decoded again.

    cache = MediaCache(max_bytes=1 << 30)            # or media_cache(megabytes): None for 0 (no cache)
    frames = cache.get_or_load(key, lambda: processor.video(path))   # (T, 3, H, W), read-only
    cache.stats()   # {"entries", "bytes", "max_bytes", "hits", "misses"}

Evaluation sets and chat front ends ask several questions about one video (ActivityNet-QA about ten,
Video-MME three); each would otherwise decode it again (tens of ms of CPU for a short clip, the dearest
part of a question to a small model). vLLM keeps the same kind of cache of processed multimodal inputs.
Used by the server (serve/media.py), by batch answering (answering.py: `answer`, `eval`, the demo) and
by the demo's phase caches (demo/recipe.py `build_caches`: its phases' rows are about the same clips).

A key names the content and how it was processed, never just a path: a file is keyed by
`file_identity` (real path, size, modification time, inode: a file rewritten in place is decoded
again), a `data:` URL or `input_audio` payload by the SHA-256 of its bytes; both with the kind (video,
image, audio) and the pre-processing (frame count, or the processor's settings). Least recently used entries are dropped once the
arrays' bytes pass `max_bytes`; an array larger than the whole cache is returned without being kept.
Arrays are returned read-only, so one request cannot change what the next one reads.

Thread-safe: the server's worker pool looks things up concurrently. Two requests that miss on the same
key at the same time both decode it (the second result replaces the first; they are equal).
"""
from __future__ import annotations

import collections
import os
import threading
from typing import Callable, Hashable, Optional

import numpy as np


def file_identity(path: str) -> tuple:
    """(real path, size, modification time in ns, inode): what names a file's content in a cache key."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return (real, st.st_size, st.st_mtime_ns, st.st_ino)


class MediaCache:
    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes} (to disable the cache, do not make one)")
        self.max_bytes = int(max_bytes)
        self._entries: "collections.OrderedDict[Hashable, np.ndarray]" = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_load(self, key: Hashable, load: Callable[[], np.ndarray], keep: bool = True) -> np.ndarray:
        """The cached array of `key`, else load() (kept unless `keep` is False: a caller that knows the
        array will not be asked for again need not push others out)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
            self.misses += 1
        value = np.asarray(load())  # outside the lock: decoding is the slow part
        value.setflags(write=False)
        with self._lock:
            if keep and value.nbytes <= self.max_bytes:
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= old.nbytes
                self._entries[key] = value
                self._bytes += value.nbytes
                while self._bytes > self.max_bytes:
                    _, dropped = self._entries.popitem(last=False)
                    self._bytes -= dropped.nbytes
        return value

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses}


def media_cache(megabytes: float) -> Optional[MediaCache]:
    """A MediaCache of `megabytes` (the `--media-cache-mb` flags), or None for 0: decode every time."""
    return MediaCache(int(megabytes * 2 ** 20)) if megabytes > 0 else None
