"""The demo's dataset: questions about synthetic audio-visual scenes, as real mp4 files + annotations.

    make_qa_dataset(folder, num_train=600, num_test=60, seed=0)

writes into `folder` (atomically: built under a temporary name, then renamed):

    videos/train_XXXX.mp4, videos/test_XXXX.mp4    clips of synthetic_scenes.py (video + sound track)
    video.json     training rows in the original's format: the clip with some of its visual questions
                   (spatial, temporal, counting) as a multi-turn conversation, `<video>` tag
    audio.json     (the first `num_audio` clips) the clip's sound track alone (`audio` names the mp4) with its audio questions, `<audio>`
    av.json        questions of every kind about the clip (read with `audio_from_video`: the video with its sound)
    test.jsonl     held-out questions, one a line: {"id", "video", "question", "answer", "kind", "options",
                   "chance", "template", "letter", "av": true}; `answer` is a word (multiple choice
                   too: the option's words; `letter` is its letter, or null for a short question)
    DONE           the arguments and the generator's FORMAT: the folder is complete (a folder made with
                   other arguments, or by an earlier generator, is made again)

Question kinds, each answered by a different part of the model:

    spatial        colour of a shape, shape of a colour                 (one frame is enough)
    temporal       which way the mover goes, which shape appeared first,
                   did a shape change colour                            (needs the order of the frames)
    counting       how many shapes there are
    audio          high or low, tone / beeps / chirp, how many beeps,
                   does the chirp go up or down                         (the sound track)
    audio-visual   did the beep come when the X appeared, which shape
                   appeared with the beep                               (sound and frames in time)

Each question is asked either short ("What colour is the circle?" -> "red") or as multiple choice
("... (A) blue (B) red (C) yellow (D) green" -> "red", its letter "B" kept beside it). `chance` is the accuracy of a uniform guess:
1 / the number of options, or 1 / the number of possible answers of the template.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Dict, List, Sequence

import numpy as np

from data_pipelines.synthetic_scenes import COLOURS, DIRECTIONS, SHAPES, Scene, sample_scene, write_clip

KINDS = ("spatial", "temporal", "counting", "audio", "audio-visual")
VISUAL_KINDS = ("spatial", "temporal", "counting")
NUMBERS = ("one", "two", "three")
LETTERS = "ABCD"
MC_SHARE = 0.4  # of the questions asked as multiple choice
# Questions per training conversation: about 20 tokens each, so these fit 112 / 96 / 128 text tokens
# (the phase configs' length buckets; the decoder's cost grows with them).
MAX_VIDEO_TURNS, MAX_AUDIO_TURNS, MAX_AV_TURNS = 4, 3, 5
DONE = "DONE"
# The generator's version, recorded in DONE: raise it whenever a seed's clips, rows or held-out
# questions change, so that a folder written by the earlier generator is made again. 2: `pick`'s rule.
FORMAT = 2
WRITE_THREADS = 4  # at most; one per core


def _q(kind: str, template: str, question: str, answer: str, choices: Sequence[str]) -> dict:
    """One question: `choices` are every answer the template can have (its chance level)."""
    assert answer in choices, (answer, choices)
    return {"kind": kind, "template": template, "question": question, "answer": answer, "choices": list(choices)}


def scene_questions(scene: Scene) -> List[dict]:
    """Every question the scene answers unambiguously, short form."""
    out = []
    objs = scene.objects
    steady = [o for o in objs if o.new_colour is None]
    for o in steady:
        out.append(_q("spatial", "colour", f"What colour is the {o.shape}?", o.colour, list(COLOURS)))
        out.append(_q("spatial", "shape", f"What shape is the {o.colour} one?", o.shape, SHAPES))
    out.append(_q("temporal", "direction", f"Which way does the {scene.mover.shape} move?", scene.direction,
                  DIRECTIONS))
    for i, a in enumerate(objs):
        for b in objs[i + 1:]:
            if a.appear != b.appear:
                first = a if a.appear < b.appear else b
                pair = sorted([a.shape, b.shape])
                out.append(_q("temporal", "first", f"Which appeared first, the {pair[0]} or the {pair[1]}?",
                              first.shape, pair))
    for o in objs:
        out.append(_q("temporal", "change", f"Did the {o.shape} change colour?",
                      "yes" if o.new_colour else "no", ("yes", "no")))
    out.append(_q("counting", "count", "How many shapes are there?", NUMBERS[len(objs) - 1], NUMBERS))

    s = scene.sound
    out.append(_q("audio", "sound", "Is it a tone, beeps or a chirp?", s.kind, ("tone", "beeps", "chirp")))
    if s.pitch is not None:
        out.append(_q("audio", "pitch", "Is the sound high or low?", s.pitch, ("high", "low")))
    if s.kind == "beeps":
        out.append(_q("audio", "beeps", "How many beeps are there?", NUMBERS[len(s.beeps) - 1], NUMBERS))
    if s.kind == "chirp":
        out.append(_q("audio", "sweep", "Does the chirp go up or down?", s.sweep, ("up", "down")))

    if s.kind == "beeps" and len(s.beeps) == 1:
        beep = s.beeps[0]
        for o in objs:
            if o.appear > 0:
                out.append(_q("audio-visual", "sync", f"Did the beep come when the {o.shape} appeared?",
                              "yes" if o.appear == beep else "no", ("yes", "no")))
        with_beep = [o for o in objs if o.appear == beep]
        if len(with_beep) == 1 and len(objs) > 1:
            out.append(_q("audio-visual", "with_beep", "Which shape appeared with the beep?", with_beep[0].shape,
                          [o.shape for o in objs]))
    return out


def as_asked(q: dict, rng: np.random.Generator, multiple_choice: bool) -> dict:
    """The question as put to the model: short, or with lettered options (the choices, shuffled).

    A multiple-choice answer is the chosen option's words, as a short answer is; its letter is kept in
    `letter` (the scorer takes either). A decoder trained from scratch for minutes does not learn to map
    an answer to its letter (measured: docs/demo_findings.md), a skill released models bring from their
    pretrained LLM."""
    q = dict(q, stem=q["question"])
    if multiple_choice:
        options = [str(c) for c in rng.permutation(q["choices"])]
        q["options"] = options
        q["question"] = q["question"] + " " + " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
        q["letter"] = LETTERS[options.index(q["answer"])]
        q["chance"] = 1.0 / len(options)
    else:
        q["options"] = None
        q["letter"] = None
        q["chance"] = 1.0 / len(q["choices"])
    return q


def _conversation(tag: str, questions: Sequence[dict]) -> list:
    turns = []
    for i, q in enumerate(questions):
        turns.append({"from": "human", "value": (tag + "\n" if i == 0 else "") + q["question"]})
        turns.append({"from": "gpt", "value": q["answer"]})
    return turns


OBJECT_WORDS = frozenset(COLOURS) | frozenset(SHAPES)


def _words(text: str) -> set:
    return set(text.lower().replace("?", " ").replace(",", " ").split())


def independent(a: dict, b: dict) -> bool:
    """Neither question names the object that is the other's answer (by its colour or shape; options
    aside): in one conversation, "What colour is the circle? red" would hand "What shape is the red
    one?" its answer."""
    def names(q: dict, answer: str) -> bool:
        return answer in OBJECT_WORDS and answer in _words(q["stem"])
    return not names(b, a["answer"]) and not names(a, b["answer"])


def pick(questions: Sequence[dict], limit: int, rng: np.random.Generator) -> List[dict]:
    """Up to `limit` of `questions` (as_asked) in a random order: one of each kind present first, then
    any, each `independent` of those picked before it.

    Without that rule half of the training rows' shape questions had their answer named by an earlier
    turn of the same conversation (measured on the default dataset: 376 of 763), a shortcut that the
    held-out questions, asked one at a time, do not offer. The generator draws what it drew without the
    rule (one permutation of the questions, one of min(limit, n) to order the picks), so the clips and
    the held-out questions of a seed stay the same."""
    order = [questions[i] for i in rng.permutation(len(questions))]
    first = {}
    for q in order:
        first.setdefault(q["kind"], q)
    chosen: List[dict] = []
    for q in list(first.values()) + order:
        if len(chosen) < limit and all(q is not c and independent(q, c) for c in chosen):
            chosen.append(q)
    return [chosen[i] for i in rng.permutation(min(limit, len(questions))) if i < len(chosen)]


def _train_rows(rel: str, scene: Scene, rng: np.random.Generator, with_audio_row: bool) -> Dict[str, dict]:
    """The clip's row in each phase file: some of its questions as one conversation (the limits keep
    the text within the phase configs' length bucket)."""
    asked = [as_asked(q, rng, rng.random() < MC_SHARE) for q in scene_questions(scene)]
    visual = [q for q in asked if q["kind"] in VISUAL_KINDS]
    audio = [q for q in asked if q["kind"] == "audio"]
    rows = {"video.json": {"video": rel, "conversations": _conversation("<video>", pick(visual, MAX_VIDEO_TURNS, rng))},
            "av.json": {"video": rel, "conversations": _conversation("<video>", pick(asked, MAX_AV_TURNS, rng))}}
    if with_audio_row:
        rows["audio.json"] = {"audio": rel, "conversations": _conversation("<audio>", pick(audio, MAX_AUDIO_TURNS, rng))}
    return rows


def _test_rows(rel: str, scene: Scene, rng: np.random.Generator, start_id: int) -> List[dict]:
    rows = []
    for q in scene_questions(scene):
        q = as_asked(q, rng, rng.random() < MC_SHARE)
        rows.append({"id": start_id + len(rows), "video": rel, "av": True, "question": q["question"],
                     "answer": q["answer"], "letter": q["letter"], "kind": q["kind"], "template": q["template"],
                     "options": q["options"], "chance": q["chance"]})
    return rows


def balance(rows: List[dict], per_kind: int, rng: np.random.Generator) -> List[dict]:
    """At most `per_kind` questions of each kind, spread over the templates of the kind as evenly as the
    clips allow (so a frequent template, e.g. colour, does not crowd out a rare one, e.g. sweep)."""
    out = []
    for kind in KINDS:
        by_template: Dict[str, List[dict]] = {}
        for r in rows:
            if r["kind"] == kind:
                by_template.setdefault(r["template"], []).append(r)
        pools = [[r for r in (by_template[t][i] for i in rng.permutation(len(by_template[t])))]
                 for t in sorted(by_template)]
        picked = []
        while len(picked) < per_kind and any(pools):
            for pool in pools:  # round robin over templates
                if pool and len(picked) < per_kind:
                    picked.append(pool.pop())
        out.extend(picked)
    return sorted(out, key=lambda r: r["id"])


def _write_clips(folder: str, clips: Sequence, progress: bool) -> None:
    """Encode the (relative path, scene) `clips`, a few at a time: PyAV encodes without holding the GIL,
    so threads share the cores (2 cores: 41 -> 26 ms a clip) and each file is what one thread writes."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    with ThreadPoolExecutor(max(1, min(WRITE_THREADS, os.cpu_count() or 1))) as pool:
        done = pool.map(lambda clip: write_clip(os.path.join(folder, clip[0]), clip[1]), clips)
        for _ in tqdm(done, total=len(clips), desc="writing clips", unit="clip", disable=not progress):
            pass  # map yields in order and re-raises a clip's error here


def _generate(folder: str, num_train: int, num_test: int, num_audio: int, seed: int, per_kind: int,
              progress: bool) -> None:
    os.makedirs(os.path.join(folder, "videos"))
    rng = np.random.default_rng(seed)
    files: Dict[str, list] = {"video.json": [], "audio.json": [], "av.json": []}
    test: List[dict] = []
    clips = []
    # Scenes and questions first, in one order from one generator (the dataset depends on the seed only),
    # then the files.
    for split, i in [("train", i) for i in range(num_train)] + [("test", i) for i in range(num_test)]:
        scene = sample_scene(rng)
        rel = f"videos/{split}_{i:04d}.mp4"
        clips.append((rel, scene))
        if split == "train":
            for name, row in _train_rows(rel, scene, rng, with_audio_row=i < num_audio).items():
                files[name].append(row)
        else:
            test.extend(_test_rows(rel, scene, rng, len(test)))
    _write_clips(folder, clips, progress)
    for name, rows in files.items():
        with open(os.path.join(folder, name), "w") as f:
            json.dump(rows, f, indent=0)
    with open(os.path.join(folder, "test.jsonl"), "w") as f:
        for row in balance(test, per_kind, rng):
            f.write(json.dumps(row) + "\n")


def make_qa_dataset(folder: str, num_train: int = 600, num_test: int = 60, num_audio: int = 200, seed: int = 0,
                    per_kind: int = 40, progress: bool = True) -> str:
    """Generate the dataset into `folder` unless a complete one made with the same arguments is there.

    `num_audio`: how many of the training clips also get a row in audio.json (the audio phase is short;
    decoding a sound track is the dearest part of a sample). `per_kind`: held-out questions per kind."""
    done = os.path.join(folder, DONE)
    want = {"num_train": num_train, "num_test": num_test, "num_audio": num_audio, "seed": seed, "per_kind": per_kind,
            "format": FORMAT}
    if os.path.exists(done):
        with open(done) as f:
            if json.load(f) == want:
                return folder
        shutil.rmtree(folder)  # made with other arguments or by an earlier generator: replace it
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(folder), dir=parent)
    try:
        _generate(tmp, num_train, num_test, num_audio, seed, per_kind, progress)
        with open(os.path.join(tmp, DONE), "w") as f:
            json.dump(want, f)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        os.rename(tmp, folder)  # atomic: readers see nothing or everything
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return folder


def read_test_questions(folder: str) -> List[dict]:
    with open(os.path.join(folder, "test.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
