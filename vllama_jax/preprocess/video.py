"""Video decoding (PyAV) and the original's frame sampling.

    read_clip(path, num_frames, start=None, end=None) -> list of (H, W, 3) uint8 RGB frames
    read_clip(path, None, ...)                          -> one frame per second (at most MAX_FRAMES)

A source is a video file (mp4, mkv, webm, avi, ... anything FFmpeg reads), a GIF, or a folder of frame
images (taken in sorted file-name order). Sampling follows VideoLLaMA 2's `process_video`:

1. the source's frame count and fps: a video file's average frame rate, 25 for a GIF, 3 for a folder;
2. `start` / `end` seconds select frames [max(int(start * fps) - 1, 0), min(int(end * fps) - 1, last)]
   (when both are given they are clamped at 0, swapped when reversed, and end = start + 1 s when equal);
3. `num_frames` indices uniformly over that range: the midpoints of `num_frames` equal segments of
   (duration - 1) frames, rounded half up. A range shorter than `num_frames` repeats frames; only a
   GIF, whose reader keeps each selected frame once, gives fewer frames, and `pad_clip` then appends
   black frames.
   With `num_frames=None` the original samples by time instead: one frame in the middle of every
   int(fps)-frame second of the range (a clip as long as the video in seconds, at most MAX_FRAMES).

The frame count of a video file is its number of video packets and frame i is the i-th in
presentation order, which is how the original's decoder (decord) indexes frames. Frames are reached by
seeking to the key frame before each wanted one and decoding forward, so a long video is not decoded
whole; a file without usable timestamps is decoded from its start instead.
"""
from __future__ import annotations

import bisect
import os
import threading
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageSequence

from vllama_jax.preprocess.image import to_rgb

GIF_FPS = 25  # the original reads GIFs with this fixed rate
FOLDER_FPS = 3  # and folders of frames with this one
MAX_FRAMES = 32  # the original never returns more frames than this
FRAMES_PER_SECOND = 1  # the rate of the original's time-based sampling (num_frames=None)

# FFmpeg's decoding threads for one video, set per calling thread. Unset, FFmpeg picks (frame and slice
# threads over every core), which shortens the decode of one large video. A pool that decodes several
# videos at once (the server's media workers) sets 1: its parallelism is across videos, and FFmpeg's own
# threads on top would oversubscribe the cores and add frame threading's start-up delay to every request
# (on small clips one thread is faster even alone: sample_demo_3.mp4 read and pre-processed 39 -> 47 times a
# second on 2 cores).
_decoding = threading.local()


def set_decode_threads(n: Optional[int]) -> None:
    """FFmpeg threads per video decoded by the calling thread (None: FFmpeg's choice, the default)."""
    _decoding.threads = n


def _set_threads(stream) -> None:
    n = getattr(_decoding, "threads", None)
    if n is None:
        stream.thread_type = "AUTO"
    else:
        stream.codec_context.thread_count = n


class VideoError(ValueError):
    """A video source that cannot be read (corrupt, not a video, no frames in range); names the file."""


# ----------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------

def uniform_indices(duration: int, num_frames: int) -> np.ndarray:
    """`num_frames` positions in [0, duration): segment midpoints over duration - 1 frames.

    Computed as the original does, (seg * i + seg * (i + 1)) / 2, then rounded with a 1e-6 nudge so
    that halves round up rather than to even.
    """
    seg = float(duration - 1) / num_frames
    mids = [(seg * i + seg * (i + 1)) / 2 for i in range(num_frames)]
    return np.round(np.asarray(mids) + 1e-6).astype(int)


def per_second_indices(duration: int, fps: float) -> np.ndarray:
    """Positions in [0, duration) one second apart: the middle frame of each int(fps)-frame second.

    A range shorter than a second gives its middle frame. The rate is floored as the original floors
    it (fps // 1), so a 29.97 fps video steps by 29 frames.
    """
    step = int(min(fps // FRAMES_PER_SECOND, duration))
    if step < 1:  # a source slower than one frame a second: every frame
        step = 1
    return np.arange(step // 2, duration, step, dtype=int)


def frame_range(total: int, fps: float, start: Optional[float] = None, end: Optional[float] = None) -> range:
    """The frames between `start` and `end` seconds, as the original's `process_video` selects them."""
    if start is not None and end is not None:
        start, end = max(start, 0.0), max(end, 0.0)
        if start > end:
            start, end = end, start
        elif start == end:
            end = start + 1
    first = 0 if start is None else max(int(start * fps) - 1, 0)
    last = total - 1 if end is None else min(int(end * fps) - 1, total - 1)
    return range(first, last + 1)


def sample_indices(total: int, fps: float, num_frames: Optional[int], start: Optional[float] = None,
                   end: Optional[float] = None) -> List[int]:
    """Frame indices of a `total`-frame source at `fps` for a clip of `num_frames` (None: one a second)."""
    frames = frame_range(total, fps, start, end)
    if len(frames) == 0:
        raise ValueError(f"start={start} s, end={end} s select no frames of {total} at {fps:.3f} fps")
    if num_frames is None:
        return [frames[i] for i in per_second_indices(len(frames), fps)][:MAX_FRAMES]
    return [frames[i] for i in uniform_indices(len(frames), num_frames)]


def pad_clip(frames: List[np.ndarray], num_frames: Optional[int]) -> List[np.ndarray]:
    """Append black frames up to `num_frames` (None: none), then keep at most MAX_FRAMES, as the original does.

    The original builds its black frame as zeros of shape (W, H, 3) from the last frame's PIL size
    (W, H): width and height swapped. It only matters with the "pad" aspect ratio, where the black
    area then lies across the square canvas the other way; kept so that padded clips match.
    """
    frames = list(frames)
    while frames and num_frames is not None and len(frames) < num_frames:
        h, w = frames[-1].shape[:2]
        frames.append(np.zeros((w, h, 3), np.uint8))
    return frames[:MAX_FRAMES]


# ----------------------------------------------------------------------------------------------------
# Sources: each knows its frame count and fps, and reads frames by index
# ----------------------------------------------------------------------------------------------------

class FolderSource:
    """A folder of frame images; every entry of the folder, in sorted name order, is a frame."""

    fps = FOLDER_FPS

    def __init__(self, path: str):
        self.path = path
        self.files = sorted(os.listdir(path))
        self.num_frames = len(self.files)

    def read(self, indices: Sequence[int]) -> List[np.ndarray]:
        out = []
        for i in indices:
            file = os.path.join(self.path, self.files[i])
            try:
                with Image.open(file) as img:
                    out.append(to_rgb(img))
            except (OSError, ValueError) as e:
                raise VideoError(f"cannot read frame '{file}': {e}") from e
        return out


class GifSource:
    """An animated GIF. Each selected frame is returned once, in order, even if sampled twice."""

    fps = GIF_FPS

    def __init__(self, path: str):
        self.path = path
        try:
            with Image.open(path) as img:
                self.num_frames = getattr(img, "n_frames", 1)
        except (OSError, ValueError) as e:
            raise VideoError(f"cannot read GIF '{path}': {e}") from e

    def read(self, indices: Sequence[int]) -> List[np.ndarray]:
        wanted, last = set(indices), max(indices)
        out = []
        with Image.open(self.path) as img:
            for i, frame in enumerate(ImageSequence.Iterator(img)):
                if i in wanted:
                    # The original reads RGBA and drops alpha (no compositing).
                    out.append(np.asarray(frame.convert("RGBA"))[..., :3].copy())
                if i >= last:
                    break
        return out


class VideoFileSource:
    """A video file read with PyAV; `num_frames` counts its video packets (see the module docstring)."""

    def __init__(self, path: str):
        import av

        self.path = path
        try:
            self.container = av.open(path)
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise VideoError(f"cannot open video '{path}': {e}") from e
        try:
            self._index()
        except BaseException:
            self.container.close()
            raise

    def _index(self):
        """Frame rate, frame count and each frame's timestamp, from one pass over the packets."""
        import av

        path = self.path
        if not self.container.streams.video:
            raise VideoError(f"'{path}' has no video stream")
        self.stream = self.container.streams.video[0]
        _set_threads(self.stream)
        rate = self.stream.average_rate or self.stream.guessed_rate
        if not rate:
            raise VideoError(f"'{path}': the video stream has no frame rate")
        self.fps = float(rate)
        pts, keys = [], []
        try:
            for packet in self.container.demux(self.stream):
                if packet.size == 0:  # the flush packet PyAV yields at the end
                    continue
                pts.append(packet.pts)
                keys.append(packet.is_keyframe)
        except av.FFmpegError as e:
            raise VideoError(f"cannot read video '{path}': {e}") from e
        self.num_frames = len(pts)
        if self.num_frames == 0:
            raise VideoError(f"'{path}' has no video frames")
        # Seeking needs every frame's timestamp; without them, decode from the start.
        self.seekable = None not in pts and len(set(pts)) == len(pts)
        if self.seekable:
            order = np.argsort(pts, kind="stable")
            self.pts = [pts[i] for i in order]  # frame index -> timestamp
            self.index_of = {p: i for i, p in enumerate(self.pts)}
            self.key_frames = [i for i, k in enumerate(order) if keys[k]] or [0]

    def read(self, indices: Sequence[int], seek: Optional[bool] = None) -> List[np.ndarray]:
        """Frames at `indices` (repeats allowed). `seek=False` forces decoding from the start."""
        import av

        seek = self.seekable if seek is None else seek and self.seekable
        try:
            got = self._read_seeking(indices) if seek else self._read_sequential(indices)
        except av.FFmpegError as e:
            raise VideoError(f"cannot decode video '{self.path}': {e}") from e
        last = max(got) if got else None
        if last is None:
            raise VideoError(f"'{self.path}': no frame could be decoded")
        # A file may hold more packets than decodable frames (a broken tail): such indices get the
        # last frame that was read.
        return [got[i] if i in got else got[last] for i in indices]

    def _read_sequential(self, indices: Sequence[int]) -> Dict[int, np.ndarray]:
        import av

        wanted, last, got = set(indices), max(indices), {}
        with av.open(self.path) as container:  # a fresh demuxer: no seeking needed
            stream = container.streams.video[0]
            _set_threads(stream)
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
        return got

    def _decoded(self, wanted) -> Iterator:
        """Decoded frames from the demuxer's position on, skipping the frames no other frame refers to
        ("non-reference": most B-frames) unless they are wanted.

        A skipped frame is never output and is no input of any other frame's decoding, so the frames that
        are output are bit for bit the ones a full decode gives; about a third of the decoding work of a
        typical H.264 file is saved. The decoder takes the skip setting with each packet it is sent, and
        a packet's timestamp says which frame it holds.
        """
        context = self.stream.codec_context
        for packet in self.container.demux(self.stream):
            i = self.index_of.get(packet.pts) if packet.pts is not None else None
            context.skip_frame = "DEFAULT" if i is None or i in wanted else "NONREF"
            yield from packet.decode()
        context.skip_frame = "DEFAULT"

    def _read_seeking(self, indices: Sequence[int]) -> Dict[int, np.ndarray]:
        wanted, got = set(indices), {}
        frames, position = None, -1  # the live decode iterator, index of the last frame it gave
        for target in sorted(wanted):
            key = self.key_frames[bisect.bisect_right(self.key_frames, target) - 1]
            # Decode on from where we are unless a key frame closer to the target lets us skip ahead.
            if frames is None or position >= target or key > position + 1:
                self.container.seek(self.pts[key], stream=self.stream, backward=True, any_frame=False)
                frames, position = self._decoded(wanted), key - 1
            for frame in frames:
                i = self.index_of.get(frame.pts)
                if i is None:  # frame timestamps differ from the packets': decode from the start
                    return self._read_sequential(indices)
                if i <= position:  # leading frames of an open GOP, decoded without their references
                    continue
                position = i
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= target:
                    break
            if target not in got and position > target:  # the seek overshot: decode from the start
                return self._read_sequential(indices)
        return got

    def close(self):
        self.container.close()


def open_source(path: str):
    """The source object for a video file, a GIF or a folder of frames."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return FolderSource(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: {path}")
    if path.lower().endswith(".gif"):
        return GifSource(path)
    return VideoFileSource(path)


def read_clip(path: str, num_frames: Optional[int], start: Optional[float] = None,
              end: Optional[float] = None) -> List[np.ndarray]:
    """The sampled frames of a video source, (H, W, 3) uint8 each, not yet padded (see `pad_clip`)."""
    source = open_source(path)
    try:
        try:
            indices = sample_indices(source.num_frames, source.fps, num_frames, start, end)
        except ValueError as e:
            raise VideoError(f"'{path}': {e}") from None
        return source.read(indices)
    finally:
        if isinstance(source, VideoFileSource):
            source.close()
