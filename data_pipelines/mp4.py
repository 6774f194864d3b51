"""Writing an mp4 with PyAV: the synthetic datasets' clips (synthetic.py, synthetic_scenes.py).

    write_mp4(path, frames, fps, wave=None, sample_rate=16000, bit_rate=None)

frames: (T, H, W, 3) uint8 RGB (any iterable of such frames), encoded as mpeg4 yuv420p; wave: a mono
float32 track in [-1, 1], encoded as AAC in the encoder's 1024-sample frames (the last one zero-padded).
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

AAC_FRAME = 1024  # samples per AAC encoder frame


def write_mp4(path: str, frames: Iterable[np.ndarray], fps: int, wave: Optional[np.ndarray] = None,
              sample_rate: int = 16000, bit_rate: Optional[int] = None) -> None:
    import av

    frames = list(frames)
    height, width = frames[0].shape[:2]
    with av.open(path, "w") as container:
        vstream = container.add_stream("mpeg4", rate=fps)
        vstream.width, vstream.height = width, height
        vstream.pix_fmt = "yuv420p"
        if bit_rate is not None:
            vstream.bit_rate = bit_rate
        astream = container.add_stream("aac", rate=sample_rate, layout="mono") if wave is not None else None
        for frame in frames:
            for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is None:
            return
        for i in range(0, len(wave), AAC_FRAME):
            part = np.zeros((1, AAC_FRAME), np.float32)
            piece = wave[i:i + AAC_FRAME]
            part[0, :len(piece)] = piece
            frame = av.AudioFrame.from_ndarray(part, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, i
            for packet in astream.encode(frame):
                container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)
