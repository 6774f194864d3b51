"""Procedural audio-visual scenes for the demo: coloured shapes that move, appear and change, over a
sound track of tones, beeps or chirps; sampled from a seeded RNG and written as real mp4 files.

    scene = sample_scene(rng)                    # a Scene: what happens, in plain values
    frames = render_frames(scene)                # (FRAMES, SIZE, SIZE, 3) uint8, 8 fps
    wave = render_sound(scene)                   # (SECONDS * 16000,) float32 in [-1, 1]
    write_clip("clip.mp4", scene)                # mpeg4 video + AAC mono 16 kHz, through PyAV

A scene lasts SECONDS = 2 s at FPS = 8 (16 frames of SIZE x SIZE = 40 x 40 px) on a plain grey
background. It holds 1 to 3 objects of distinct shapes (square, circle, triangle) and distinct colours:

- the *mover* slides across the frame left, right, up or down over the whole clip, visible from the
  first frame to the last: averaged over time, its path is the same streak whichever way it goes, so
  only a model that keeps the frames' order (the STC connector, not mean pooling) can tell the direction;
- the others stand still in the half of the frame the mover does not cross, and each shows up at 0,
  0.5 or 1 s (APPEAR_TIMES), so some appear while the clip plays;
- at most one object changes colour at CHANGE_TIME (1 s), to the colour no object has.

The sound is a steady tone (high or low), 1 to 3 short beeps (high or low), or a chirp that sweeps up
or down. A single beep is placed, half the time, exactly when an object appears (the audio-visual
questions ask about that). Everything a question asks is a function of these values
(synthetic_qa.py), so a model that sees the clip and hears its track can answer it.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from data_pipelines.mp4 import write_mp4

SIZE = 40  # px, square frames
FPS = 8
SECONDS = 2.0
FRAMES = int(SECONDS * FPS)
SAMPLE_RATE = 16000
OBJECT = 12  # px, the side of an object's bounding box
BACKGROUND = (128, 128, 128)

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 235), "yellow": (240, 220, 30)}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
APPEAR_TIMES = (0.0, 0.5, 1.0)  # s; on frame boundaries at 8 fps (frames 0, 4, 8)
CHANGE_TIME = 1.0  # s
SOUNDS = ("tone", "beeps", "chirp")
PITCHES = {"low": 330.0, "high": 1760.0}  # Hz: two octaves and more apart, both well inside the mel range
CHIRP_RANGE = (300.0, 2000.0)  # Hz, swept up or down over the clip
BEEP_SECONDS = 0.15
BEEP_TIMES = (0.1, 0.5, 1.0, 1.5)  # s, where beeps may start (0.5 and 1.0 are appearance times)


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    appear: float  # s: first visible at this time
    start: Tuple[float, float]  # (x, y) of the top-left corner at t = 0, px
    velocity: Tuple[float, float] = (0.0, 0.0)  # px per second
    new_colour: Optional[str] = None  # the colour it turns into at CHANGE_TIME, or None

    def colour_at(self, t: float) -> str:
        return self.new_colour if self.new_colour is not None and t >= CHANGE_TIME else self.colour

    def position_at(self, t: float) -> Tuple[float, float]:
        return self.start[0] + self.velocity[0] * t, self.start[1] + self.velocity[1] * t


@dataclasses.dataclass(frozen=True)
class Sound:
    kind: str  # "tone", "beeps" or "chirp"
    pitch: Optional[str] = None  # "high" / "low" (tone and beeps)
    beeps: Tuple[float, ...] = ()  # start times, s (beeps)
    sweep: Optional[str] = None  # "up" / "down" (chirp)


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: Tuple[SceneObject, ...]  # objects[0] is the mover
    direction: str  # of the mover
    sound: Sound

    @property
    def mover(self) -> SceneObject:
        return self.objects[0]


# ----------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------

def _mover(rng: np.random.Generator, shape: str, colour: str, appear: float, direction: str) -> SceneObject:
    """Crosses the frame edge to edge in a band along one side (the statics take the other half), from
    the first frame to the last: a mover and its opposite pass the same positions, in reverse order."""
    lo, hi = 1.0, SIZE - OBJECT - 1.0
    speed = (hi - lo) / ((FRAMES - 1) / FPS)
    band = float(rng.choice([2.0, SIZE / 2 - OBJECT - 1.0]))  # near the edge or near the middle of its half
    if direction in ("left", "right"):
        x0 = lo if direction == "right" else hi
        return SceneObject(shape, colour, appear, (x0, band), (speed if direction == "right" else -speed, 0.0))
    y0 = lo if direction == "down" else hi
    return SceneObject(shape, colour, appear, (band, y0), (0.0, speed if direction == "down" else -speed))


def _static_slots(direction: str) -> List[Tuple[float, float]]:
    """Top-left corners in the half of the frame the mover never enters (the mover keeps to the first
    half across its motion: the top rows for left/right, the left columns for up/down)."""
    far = SIZE / 2 + 2.0
    along = (3.0, SIZE - OBJECT - 3.0)
    if direction in ("left", "right"):
        return [(a, far) for a in along]
    return [(far, a) for a in along]


def sample_scene(rng: np.random.Generator) -> Scene:
    count = int(rng.integers(1, 4))
    shapes = [str(s) for s in rng.permutation(SHAPES)[:count]]
    colours = [str(c) for c in rng.permutation(list(COLOURS))]
    direction = str(rng.choice(DIRECTIONS))
    # The mover is there from the start (a late mover's time-averaged streak would give its direction
    # away to mean pooling); the still objects show up at 0, 0.5 or 1 s.
    appear = [0.0] + [float(rng.choice(APPEAR_TIMES)) for _ in range(count - 1)]

    kind = str(rng.choice(SOUNDS, p=[0.25, 0.5, 0.25]))
    if kind == "beeps":
        n = int(rng.choice([1, 2, 3], p=[0.5, 0.25, 0.25]))
        if n == 1 and count > 1 and rng.random() < 0.5:
            # A beep on an appearance: make a still object appear late if none does, then beep with it.
            late = [i for i in range(1, count) if appear[i] > 0]
            if not late:
                i = int(rng.integers(1, count))
                appear[i] = float(rng.choice(APPEAR_TIMES[1:]))
                late = [i]
            beeps = (appear[int(rng.choice(late))],)
        else:
            beeps = tuple(sorted(float(t) for t in rng.choice(BEEP_TIMES, size=n, replace=False)))
        sound = Sound("beeps", pitch=str(rng.choice(list(PITCHES))), beeps=beeps)
    elif kind == "tone":
        sound = Sound("tone", pitch=str(rng.choice(list(PITCHES))))
    else:
        sound = Sound("chirp", sweep=str(rng.choice(["up", "down"])))

    objects = [_mover(rng, shapes[0], colours[0], appear[0], direction)]
    slots = _static_slots(direction)
    for i, slot in enumerate(rng.permutation(len(slots))[:count - 1], start=1):
        objects.append(SceneObject(shapes[i], colours[i], appear[i], slots[int(slot)]))
    if rng.random() < 0.4:  # one object turns into the colour nobody has
        i = int(rng.integers(count))
        objects[i] = dataclasses.replace(objects[i], new_colour=colours[count])
    return Scene(tuple(objects), direction, sound)


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------

def _shape_mask(shape: str) -> np.ndarray:
    """(OBJECT, OBJECT) bool."""
    yy, xx = np.mgrid[0:OBJECT, 0:OBJECT] + 0.5
    if shape == "square":
        return np.ones((OBJECT, OBJECT), bool)
    if shape == "circle":
        r = OBJECT / 2
        return (xx - r) ** 2 + (yy - r) ** 2 <= r * r
    # An upward triangle: apex at the top centre, base along the bottom row.
    return np.abs(xx - OBJECT / 2) <= yy / 2


def render_frames(scene: Scene) -> np.ndarray:
    """(FRAMES, SIZE, SIZE, 3) uint8: frame k shows the scene at k / FPS seconds."""
    frames = np.empty((FRAMES, SIZE, SIZE, 3), np.uint8)
    frames[:] = BACKGROUND
    masks = {s: _shape_mask(s) for s in SHAPES}
    for k in range(FRAMES):
        t = k / FPS
        for obj in scene.objects:
            if t < obj.appear:
                continue
            x, y = (int(round(v)) for v in obj.position_at(t))
            mask = masks[obj.shape]
            region = frames[k, y:y + OBJECT, x:x + OBJECT]
            region[mask[:region.shape[0], :region.shape[1]]] = COLOURS[obj.colour_at(t)]
    return frames


def render_sound(scene: Scene) -> np.ndarray:
    """(SECONDS * SAMPLE_RATE,) float32 mono wave."""
    n = int(SECONDS * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    s = scene.sound
    if s.kind == "tone":
        wave = np.sin(2 * np.pi * PITCHES[s.pitch] * t)
    elif s.kind == "chirp":
        f0, f1 = CHIRP_RANGE if s.sweep == "up" else CHIRP_RANGE[::-1]
        # An exponential sweep: equal steps on the (roughly logarithmic) mel scale.
        k = np.log(f1 / f0) / SECONDS
        wave = np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
    else:
        wave = np.zeros(n)
        for start in s.beeps:
            on = (t >= start) & (t < start + BEEP_SECONDS)
            ramp = np.minimum(1.0, np.minimum(t - start, start + BEEP_SECONDS - t) / 0.01)  # 10 ms fades: no clicks
            wave = np.where(on, np.sin(2 * np.pi * PITCHES[s.pitch] * t) * ramp, wave)
    return (0.5 * wave).astype(np.float32)


def write_clip(path: str, scene: Scene) -> None:
    """The scene as an mp4: mpeg4 video (near-lossless at this size) and an AAC mono 16 kHz track."""
    # Tiny frames: a high bit rate keeps colours and edges intact.
    write_mp4(path, render_frames(scene), FPS, render_sound(scene), SAMPLE_RATE, bit_rate=2_000_000)
