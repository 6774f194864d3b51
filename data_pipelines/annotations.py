"""Annotation files in the original VideoLLaMA 2 format, read into rows.

A file is a JSON list, or JSONL (one object per line), of samples:

    {"id": "v_001", "video": "clips/v_001.mp4", "start": 1.0, "end": 4.5,
     "conversations": [{"from": "human", "value": "<video>\\nWhat happens?"},
                       {"from": "gpt", "value": "A man irons on a taxi."}]}

`video` (optionally cut by `start` / `end` seconds), `image` or `audio` name one media file relative
to the data folder; a row with none of them is text-only. The human turn carries the matching tag
(`<video>`, `<image>`, `<audio>`). An audio-visual row is a `video` row of a file whose annotations are
marked `audio_from_video` (the original's `--va`): the video's own sound track is its audio.

Rows are plain dicts (cheap to pickle to grain workers). A row that is not valid JSON, or not an
object, is kept as an *error row* `{"_error": ..., "_source": "file:line"}` so that every index
still exists; the decoder turns it into an empty sample and counts it (see `data_pipelines/samples.py`).
"""
from __future__ import annotations

import json
import logging
import os
from typing import List

log = logging.getLogger(__name__)


def read_annotation_file(path: str, audio_from_video: bool = False) -> List[dict]:
    """All rows of one annotation file, each tagged with `_source` ("file:index") for error messages."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"annotation file {path} does not exist")
    with open(path) as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):  # one JSON list
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"annotation file {path} is not valid JSON: {e}") from None
        raw = [(i, item, None) for i, item in enumerate(items)]
    else:  # JSONL: a broken line is one bad row, not a broken file
        raw = []
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                raw.append((i + 1, json.loads(line), None))
            except json.JSONDecodeError as e:
                raw.append((i + 1, None, f"not valid JSON ({e.msg})"))
    rows = []
    for where, item, error in raw:
        source = f"{path}:{where}"
        if error is None and not isinstance(item, dict):
            error = f"expected an object, got {type(item).__name__}"
        if error is not None:
            rows.append({"_error": error, "_source": source})
            continue
        rows.append({**item, "_source": source, "_audio_from_video": audio_from_video})
    n_bad = sum("_error" in r for r in rows)
    if n_bad:
        log.warning("%s: %d of %d rows are malformed; they will be skipped", path, n_bad, len(rows))
    return rows
