"""Benchmark annotation files -> a list of `EvalItem`, with every bad row skipped, counted and logged.

    items, skipped = read_benchmark("mvbench.jsonl", media_root="videos/", kind="mcqa")

Four layouts are read (`layout=`, LAYOUTS):

- normalized JSONL (`.jsonl`), one question a line:
  {"id", "video", "question", "options": [...], "answer": index | letter | option text, "task"?, "start"?, "end"?}
  For open-ended QA (`kind="oqa"`) there are no options and "answer" is the reference text. A line
  without "id" gets its line number (stable while the file is: its sha256 is in results.json).
- the original's MVBench layout (`.json` file or a folder of them): a list of
  {"video", "question", "candidates": [...], "answer": option text, "start"?, "end"?} per task file. A
  known task file gets the original's task name, video sub-folder and clip bounds (the `tasks` table of
  videollama2/eval/inference_video_mcqa_mvbench.py); any other file is a task named after the file.
- EgoSchema's questions.json (inference_video_mcqa_egoschema.py lines 45-62): a list of
  {"q_uid", "question", "option 0" .. "option 4"}, the video "<q_uid>.<ext>" in the media root. The
  original never reads answers (EgoSchema is scored on its own server); ours come from the row's
  "answer" or, when there, EgoSchema's `subset_answers.json` ({q_uid: index}) beside the file.
- Perception Test's mc_question json (inference_video_mcqa_perception_test_mcqa.py lines 42-65 and 91-92):
  {key: {"metadata": {"video_id"}, "mc_question": [{"id", "question", "options", "answer_id", "area"?}]}},
  the video "<video_id>.<ext>". The original does not read "answer_id" either (the test split has
  none; the valid split's is the Perception Test's own field); the task is the question's "area".

Where the originals look for "<name>.mp4", ".avi", ".mov" then ".mkv" in the media root, so do we; a video
found under none of them is named ".mp4" and becomes an error row when it is read.

A row is skipped (never a crash) when it is not JSON, lacks a field, has fewer than two options, an
answer that is none of its options (the original keeps such a question, one no answer can get right),
or an id seen before (resuming relies on unique ids).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import string
from typing import List, Optional, Tuple, Union

log = logging.getLogger(__name__)

KINDS = ("mcqa", "oqa")
LAYOUTS = ("jsonl", "mvbench", "egoschema", "perception_test")
LETTERS = string.ascii_uppercase
VIDEO_FORMATS = (".mp4", ".avi", ".mov", ".mkv")  # the order the original scripts try them in

# MVBench task files as the original reads them: task name, video sub-folder of the media root, and
# whether the clip's "start"/"end" bound the frames sampled.
MVBENCH_TASKS = {
    "action_sequence.json": ("Action Sequence", "star/Charades_v1_480/", True),
    "action_prediction.json": ("Action Prediction", "star/Charades_v1_480/", True),
    "action_antonym.json": ("Action Antonym", "ssv2_video/", False),
    "fine_grained_action.json": ("Fine-grained Action", "Moments_in_Time_Raw/videos/", False),
    "unexpected_action.json": ("Unexpected Action", "FunQA_test/test/", False),
    "object_existence.json": ("Object Existence", "clevrer/video_validation/", False),
    "object_interaction.json": ("Object Interaction", "star/Charades_v1_480/", True),
    "object_shuffle.json": ("Object Shuffle", "perception/videos/", False),
    "moving_direction.json": ("Moving Direction", "clevrer/video_validation/", False),
    "action_localization.json": ("Action Localization", "sta/sta_video/", True),
    "scene_transition.json": ("Scene Transition", "scene_qa/video/", False),
    "action_count.json": ("Action Count", "perception/videos/", False),
    "moving_count.json": ("Moving Count", "clevrer/video_validation/", False),
    "moving_attribute.json": ("Moving Attribute", "clevrer/video_validation/", False),
    "state_change.json": ("State Change", "perception/videos/", False),
    "fine_grained_pose.json": ("Fine-grained Pose", "nturgbd/", False),
    "character_order.json": ("Character Order", "perception/videos/", False),
    "egocentric_navigation.json": ("Egocentric Navigation", "vlnqa/", False),
    "episodic_reasoning.json": ("Episodic Reasoning", "tvqa/frames_fps3_hq/", True),  # folders of frames
    "counterfactual_inference.json": ("Counterfactual Inference", "clevrer/video_validation/", False),
}


@dataclasses.dataclass(frozen=True)
class EvalItem:
    """One benchmark question. `answer`: the option index (mcqa) or the reference text (oqa)."""
    id: Union[int, str]
    video: str
    question: str
    answer: Union[int, str]
    options: Optional[Tuple[str, ...]] = None
    task: str = "all"
    start: Optional[float] = None
    end: Optional[float] = None


class BadRow(ValueError):
    """An annotation row that cannot be evaluated."""


def answer_index(answer, options) -> int:
    """An index, a letter ("B") or an option's text -> the option index."""
    if isinstance(answer, bool):  # a JSON true is no index
        raise BadRow(f"answer {answer!r} is not an index, a letter or an option")
    if isinstance(answer, int):
        if 0 <= answer < len(options):
            return answer
        raise BadRow(f"answer index {answer} is outside the {len(options)} options")
    if isinstance(answer, str):
        if len(answer) == 1 and answer.upper() in LETTERS[:len(options)]:
            return LETTERS.index(answer.upper())
        if answer in options:
            return list(options).index(answer)
    raise BadRow(f"answer {answer!r} is not an index, a letter or one of the options")


def make_item(row: dict, kind: str, media_root: str, default_id) -> EvalItem:
    """A normalized row -> EvalItem; BadRow says why it cannot be one."""
    if not isinstance(row, dict):
        raise BadRow("not a JSON object")
    for field in ("video", "question", "answer"):
        if row.get(field) is None or row.get(field) == "":
            raise BadRow(f"no '{field}'")
    if not isinstance(row["question"], str) or not isinstance(row["video"], str):
        raise BadRow("'question' and 'video' must be strings")
    item_id = row.get("id", default_id)
    if isinstance(item_id, bool) or not isinstance(item_id, (int, str)):
        raise BadRow("'id' must be a number or a string")
    options, answer = None, row["answer"]
    if kind == "mcqa":
        options = row.get("options")
        if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS) \
                or not all(isinstance(o, str) for o in options):
            raise BadRow("'options' must be a list of 2 to 26 strings")
        options = tuple(options)
        answer = answer_index(answer, options)
    elif not isinstance(answer, str):
        raise BadRow("an open-ended 'answer' must be a string")
    return EvalItem(id=item_id, video=os.path.join(media_root, row["video"]),
                    question=row["question"], answer=answer, options=options,
                    task=str(row.get("task") or "all"), start=row.get("start"), end=row.get("end"))


def read_jsonl(path: str, media_root: str, kind: str) -> Tuple[List[EvalItem], List[dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                rows.append((f"line {n}", n, line))
    return _collect(path, rows, json.loads, kind, media_root)


def read_mvbench(path: str, media_root: str) -> Tuple[List[EvalItem], List[dict]]:
    """One MVBench task file, or every *.json of a folder (in the original's task order, then by name)."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith(".json"))
        known = [n for n in MVBENCH_TASKS if n in names]
        files = [os.path.join(path, n) for n in known + [n for n in names if n not in MVBENCH_TASKS]]
    else:
        files = [path]
    items, skipped = [], []
    for file in files:
        name = os.path.basename(file)
        task, folder, bounded = MVBENCH_TASKS.get(name, (os.path.splitext(name)[0], "", True))
        try:
            with open(file, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, list):
                raise ValueError("not a JSON list")
        except ValueError as e:
            log.warning("%s skipped: %s", file, e)
            skipped.append({"where": file, "reason": str(e)})
            continue

        def normalize(row, task=task, folder=folder, bounded=bounded):
            if not isinstance(row, dict):
                raise BadRow("not a JSON object")
            video = row.get("video")
            out = {"video": os.path.join(folder, video) if isinstance(video, str) and video else None,
                   "question": row.get("question"), "options": row.get("candidates"), "answer": row.get("answer"),
                   "task": task}
            if bounded:
                out["start"], out["end"] = row.get("start"), row.get("end")
            return out

        # Ids "Task name/index": stable across runs, unique across task files.
        rows = [(f"{name} item {i}", f"{task}/{i}", row) for i, row in enumerate(data)]
        got, bad = _collect(file, rows, normalize, "mcqa", media_root)
        items += got
        skipped += bad
    return _dedupe(items, skipped)


def video_named(media_root: str, stem: str) -> str:
    """The first of "<stem>.mp4/.avi/.mov/.mkv" in the media root, relative to it ("<stem>.mp4" if none)."""
    return next((stem + ext for ext in VIDEO_FORMATS if os.path.exists(os.path.join(media_root, stem + ext))),
                stem + VIDEO_FORMATS[0])


def _load_json(path: str, kind: type):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, kind):
        raise ValueError(f"{path}: not a JSON {kind.__name__}")
    return data


def read_egoschema(path: str, media_root: str) -> Tuple[List[EvalItem], List[dict]]:
    """EgoSchema's questions.json (module docstring), answers from the rows or subset_answers.json beside it."""
    answers_path = os.path.join(os.path.dirname(path), "subset_answers.json")
    answers = _load_json(answers_path, dict) if os.path.exists(answers_path) else {}

    def normalize(row):
        if not isinstance(row, dict) or not isinstance(row.get("q_uid"), str):
            raise BadRow("not an object with a 'q_uid' string")
        options = [row.get(f"option {i}") for i in range(5)]
        return {"id": row["q_uid"], "video": video_named(media_root, row["q_uid"]), "question": row.get("question"),
                "options": options, "answer": row.get("answer", answers.get(row["q_uid"]))}

    rows = [(f"item {i}", i, row) for i, row in enumerate(_load_json(path, list))]
    return _collect(path, rows, normalize, "mcqa", media_root)


def read_perception_test(path: str, media_root: str) -> Tuple[List[EvalItem], List[dict]]:
    """Perception Test's multiple-choice json (module docstring): one item per question of each video."""
    rows = []  # (where, id "<video_id>/<question id>", (video_id, question))
    for key, video in _load_json(path, dict).items():
        if not isinstance(video, dict) or not isinstance(video.get("mc_question"), list):
            rows.append((f"video {key}", key, None))  # normalize refuses it: skipped and counted
            continue
        video_id = str((video.get("metadata") or {}).get("video_id", key))
        for i, q in enumerate(video["mc_question"]):
            question_id = q.get("id", i) if isinstance(q, dict) else i
            rows.append((f"video {key} question {i}", f"{video_id}/{question_id}", (video_id, q)))

    def normalize(entry):
        if entry is None or not isinstance(entry[1], dict):
            raise BadRow("no 'mc_question' list of objects")
        video_id, q = entry
        return {"video": video_named(media_root, video_id), "question": q.get("question"),
                "options": q.get("options"), "answer": q.get("answer_id"), "task": q.get("area")}

    return _collect(path, rows, normalize, "mcqa", media_root)


def read_benchmark(path: str, media_root: str, kind: str, layout: str = "auto") -> Tuple[List[EvalItem], List[dict]]:
    """(items, skipped rows as {"where", "reason"}). layout: one of LAYOUTS, or "auto": .jsonl is "jsonl", any
    other name "mvbench"."""
    if kind not in KINDS:
        raise ValueError(f"benchmark kind must be one of {KINDS}, got {kind!r}")
    if layout == "auto":
        layout = "jsonl" if path.endswith(".jsonl") else "mvbench"
    readers = {"mvbench": read_mvbench, "egoschema": read_egoschema, "perception_test": read_perception_test}
    if layout in readers:
        if kind != "mcqa":
            raise ValueError(f"the {layout} layout is multiple-choice: use --benchmark mcqa")
        return readers[layout](path, media_root)
    if layout != "jsonl":
        raise ValueError(f"unknown annotation layout {layout!r}")
    return read_jsonl(path, media_root, kind)


def _collect(path, rows, normalize, kind, media_root):
    items, skipped = [], []
    for where, default_id, raw in rows:
        try:
            items.append(make_item(normalize(raw), kind, media_root, default_id))
        except ValueError as e:  # BadRow, or a line that is not JSON
            log.warning("%s %s skipped: %s", path, where, e)
            skipped.append({"where": f"{path} {where}", "reason": str(e)})
    return _dedupe(items, skipped)


def _dedupe(items, skipped):
    seen, kept = set(), []
    for item in items:
        if item.id in seen:
            log.warning("id %r seen before: skipped", item.id)
            skipped.append({"where": f"id {item.id!r}", "reason": "duplicate id"})
            continue
        seen.add(item.id)
        kept.append(item)
    return kept, skipped
