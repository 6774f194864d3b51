"""A tiny generated dataset of real media files, for the CPU smoke run and the tests.

    make_dataset(folder, num_samples=24, audio=True)  # writes train.json, av.json, bad.jsonl + media

Writes small mp4 files (a coloured square moving over a grey background, 8 fps, 2 s, with an AAC
sound track: a tone whose pitch goes with the colour), jpg images and wav files, and two annotation
files in the original format: `train.json` mixing video, image, audio and text-only rows, and
`av.json` (audio-visual rows, to be read with `audio_from_video`). The answers are functions of the
media, so a model can learn them and the loss goes down. `bad.jsonl` holds one good row and the
kinds of bad row training must survive: a missing file, an undecodable mp4, a line that is not JSON
and a conversation without an assistant turn.

Written once: process 0 builds the folder under a temporary name and renames it into place (atomic),
the other processes wait for it, so concurrent starts cannot race or read a half-written file.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Dict

import numpy as np

from data_pipelines.mp4 import write_mp4

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 220)}
TONES = {"red": 330.0, "green": 550.0, "blue": 880.0}  # Hz: each colour sounds different
DONE = "DONE"


def write_video(path: str, colour: str, seconds: float = 2.0, fps: int = 8, size: int = 64, sound: bool = True):
    rgb = np.array(COLOURS[colour], np.uint8)
    frames = []
    n = int(seconds * fps)
    for t in range(n):
        frame = np.full((size, size, 3), 128, np.uint8)
        x = int((size - 24) * t / max(n - 1, 1))
        frame[20:44, x:x + 24] = rgb
        frames.append(frame)
    write_mp4(path, frames, fps, tone(TONES[colour], seconds) if sound else None, 16000)


def tone(freq: float, seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: str, colour: str, seconds: float = 2.0, rate: int = 16000):
    import wave
    pcm = (tone(TONES[colour], seconds, rate) * 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def write_image(path: str, colour: str, size: int = 64):
    from PIL import Image
    img = np.full((size, size + 16, 3), 128, np.uint8)  # not square: exercises pad-to-square
    img[16:48, 24:56] = COLOURS[colour]
    Image.fromarray(img).save(path, quality=95)


def _turns(question: str, answer: str) -> list:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _generate(folder: str, num_samples: int, audio: bool) -> Dict[str, list]:
    for sub in ("videos", "images", "audio"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    names = list(COLOURS)
    rows, av_rows = [], []
    for i in range(num_samples):
        colour = names[i % len(names)]
        kind = ("video", "image", "audio", "text")[i % 4] if audio else ("video", "image", "text")[i % 3]
        if kind == "video":
            rel = f"videos/v{i:03d}.mp4"
            write_video(os.path.join(folder, rel), colour)
            row = {"video": rel, "conversations": _turns("<video>\nWhat colour is the square?", f"It is {colour}.")}
            if i % 8 == 0:
                row.update(start=0.5, end=1.5)
            rows.append(row)
            if audio:
                av_rows.append({"video": rel, "conversations": _turns(
                    "<video>\nWhat do you see and hear?", f"A {colour} square and a {colour} tone.")})
        elif kind == "image":
            rel = f"images/i{i:03d}.jpg"
            write_image(os.path.join(folder, rel), colour)
            rows.append({"image": rel, "conversations": _turns("What colour is the square?\n<image>", colour)})
        elif kind == "audio":
            rel = f"audio/a{i:03d}.wav"
            write_wav(os.path.join(folder, rel), colour)
            rows.append({"audio": rel, "conversations": _turns("<audio>\nWhich tone is this?", f"The {colour} tone.")})
        else:
            rows.append({"conversations": _turns(f"Say {colour} twice.", f"{colour} {colour}")})
    files = {"train.json": rows}
    if audio:
        files["av.json"] = av_rows
    for name, content in files.items():
        with open(os.path.join(folder, name), "w") as f:
            json.dump(content, f, indent=1)
    with open(os.path.join(folder, "videos", "broken.mp4"), "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)  # an mp4 header, then garbage
    lines = [
        json.dumps({"video": "videos/missing.mp4", "conversations": _turns("<video>\nWhat?", "Nothing.")}),
        json.dumps({"video": "videos/broken.mp4", "conversations": _turns("<video>\nWhat?", "Noise.")}),
        '{"video": "videos/v000.mp4", "conversations": [',  # cut off: not JSON
        json.dumps({"video": rows[0]["video"], "conversations": [{"from": "human", "value": "<video>\nHi"}]}),
        json.dumps(rows[0]),  # one good row, so the file is not all bad
    ]
    with open(os.path.join(folder, "bad.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return files


def make_dataset(folder: str, num_samples: int = 24, audio: bool = True, process_index: int = 0,
                 timeout_s: float = 600.0) -> str:
    """Generate the dataset into `folder` once; returns `folder`. Safe to call from every process."""
    done = os.path.join(folder, DONE)
    if os.path.exists(done):
        return folder
    if process_index != 0:
        deadline = time.time() + timeout_s
        while not os.path.exists(done):
            if time.time() > deadline:
                raise TimeoutError(f"waited {timeout_s:.0f} s for process 0 to write {folder} "
                                   "(the processes need a shared file system for generated data)")
            time.sleep(0.2)
        return folder
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(folder), dir=parent)
    try:
        _generate(tmp, num_samples, audio)
        with open(os.path.join(tmp, DONE), "w") as f:
            json.dump({"num_samples": num_samples, "audio": audio}, f)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        os.rename(tmp, folder)  # atomic: readers see nothing or everything
    except OSError:
        if not os.path.exists(done):  # not "someone else finished first"
            raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return folder
