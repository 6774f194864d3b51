"""Batch answering: many questions about many media files, through `VideoLLaMA2Model.generate`.

    rows = read_questions("questions.jsonl")     # [{"id", "question", "video"|"image"|"audio", ...}]
    answer_rows(model, rows, batch_size=8, on_result=print)   # {"id", "question", "answer"} or {"id", "error"}
    answer_rows(model, rows, media_cache=MediaCache(1 << 30))  # each file decoded once (preprocess/media_cache.py)

Rows are grouped into batches of the same media kind and similar prompt length (one compiled program per
bucket); media are decoded batch by batch, so without a cache memory holds one batch of videos however
many rows there are. With a `MediaCache` a file asked about again (several questions about one video,
as most evaluation sets ask) is decoded once: the rows are taken in chunks of as many distinct files as
the cache holds (in the order the files first appear), each chunk batched as above, so a file's
questions meet its decoded media in the cache however their prompt lengths sort. The cache may be
shared between calls (the demo answers the same questions with two models of one pre-processing).
An unreadable file or a prompt longer than the context gives an error row, never a crash.
Used by `vllama-jax answer`, `eval` and the demo.
"""
import json
import logging
import os
from typing import Optional

import numpy as np

from vllama_jax.generate import ContextLengthError
from vllama_jax.inference import until_eos
from vllama_jax.preprocess.conversation import build_prompt, tokenize_multimodal
from vllama_jax.preprocess.media_cache import MediaCache, file_identity

FBANK_BYTES = 2998 * 128 * 4  # one 30 s window of float32 fbank (preprocess/audio.py)
DEFAULT_MEDIA_CACHE_MB = 1024  # `answer` and `eval`: what a file's questions share (0: no cache)

log = logging.getLogger(__name__)


def read_questions(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if "question" not in row:
                    raise ValueError("no 'question' field")
            except ValueError as e:
                log.warning("%s line %d skipped: %s", path, n, e)
                continue
            row.setdefault("id", n)
            rows.append(row)
    return rows


def done_ids(path):
    ids = set()
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    ids.add(json.loads(line)["id"])
                except (ValueError, KeyError):
                    pass
    return ids


def media_kind(row):
    for k in ("video", "image", "audio"):
        if row.get(k):
            return k + ("+av" if k == "video" and row.get("av") else "")
    return "text"


def answer_rows(model, rows, batch_size=8, max_new_tokens=128, temperature=0.0, on_result=None, progress=True,
                media_cache: Optional[MediaCache] = None):
    """Answers for `rows`, calling on_result(dict) per row as soon as its batch is done.
    `progress=False`: no progress bar of its own (a caller feeding rows in chunks shows one overall).
    `media_cache`: decoded media to reuse across rows (and calls); None decodes each row's media.

    Prompts are tokenized up front (cheap) to group the rows."""
    from tqdm import tqdm

    tok = model.tokenizer
    family = model.config.decoder.family
    prompts = []
    for row in rows:
        kind = media_kind(row)
        modal = kind.split("+")[0] if kind != "text" else None
        # build_prompt puts the modal tag (or, for text alone, the newline) in front, as the original does.
        ids = tokenize_multimodal(build_prompt([{"role": "user", "content": row["question"]}], family, tok, modal), tok)
        prompts.append((kind, len(ids), row, ids))
    bar = tqdm(total=len(prompts), desc="answering", unit="q", disable=not progress)
    per_chunk = None if media_cache is None else max(1, media_cache.max_bytes // media_bytes(model))
    for chunk in media_chunks(prompts, per_chunk):
        # Group by media kind, then by length, so a batch shares one compiled program and little padding.
        chunk.sort(key=lambda x: (x[0], x[1]))
        i = 0
        while i < len(chunk):
            j = i
            while j < len(chunk) and j - i < batch_size and chunk[j][0] == chunk[i][0]:
                j += 1
            batch = []
            for _, _, row, ids in chunk[i:j]:
                media = _load_media(model, row, on_result, media_cache)
                if media is not False:
                    batch.append((row, ids, media))
            if batch:
                _answer_batch(model, batch, max_new_tokens, temperature, on_result)
            bar.update(j - i)
            i = j
    bar.close()


def media_file(row):
    """The file a row asks about (with its clip bounds), or None for a text question."""
    path = row.get("video") or row.get("image") or row.get("audio")
    return None if not path else (path, row.get("start"), row.get("end"))


def media_chunks(prompts, files_per_chunk: Optional[int]):
    """`prompts` in chunks of at most `files_per_chunk` distinct media files, a file's rows together, files
    in the order they first appear (None: one chunk, as given)."""
    if files_per_chunk is None:
        return [list(prompts)]
    by_file = {}
    for p in prompts:
        by_file.setdefault(media_file(p[2]), []).append(p)
    files = list(by_file)
    return [[p for f in files[k:k + files_per_chunk] for p in by_file[f]]
            for k in range(0, len(files), files_per_chunk)]


def media_bytes(model) -> int:
    """An upper bound on one row's decoded media for `model`: its frames (32 if it samples one a second)
    and, for an audio-visual model, one fbank window."""
    total = 0
    if model.processor is not None:
        h, w = model.processor.image_size
        total += (model.processor.num_frames or 32) * 3 * h * w * 4
    if model.config.audio is not None:
        total += FBANK_BYTES
    return max(total, 1)


def _cached(cache, key, path, load):
    """load() through the cache under key + the file's identity; a file that cannot be stat'ed is left to
    `load` to report (its own error names what is wrong)."""
    try:
        key = key + file_identity(path)
    except OSError:
        return load()
    return cache.get_or_load(key, load)


def _load_media(model, row, on_result, cache=None):
    """The row's decoded media (None for text), or False after reporting an error row for an unreadable file.
    With a cache, each part (frames, sound) is looked up by the file's identity and its pre-processing."""
    video, image, start, end = row.get("video"), row.get("image"), row.get("start"), row.get("end")
    audio = True if row.get("av") else row.get("audio")
    try:
        if cache is None or not (video or image or audio):
            return model.load_media(video=video, image=image, audio=audio, start=start, end=end)
        out = {}
        if video or image:
            proc = model.processor
            how = (repr(proc.config), proc.num_frames, proc.aspect_ratio) if proc is not None else None
            part, path = ("video", video) if video else ("image", image)
            out[part] = _cached(cache, (part, how, start, end), path,
                                lambda: model.load_media(video=video, image=image, start=start, end=end)[part])
        if audio is not None and audio is not False:
            src = video if audio is True else audio
            out["audio"] = _cached(cache, ("audio",), src, lambda: model.load_media(audio=src)["audio"])
        return out
    except Exception as e:  # an unreadable file: an error row, the run goes on
        on_result({"id": row["id"], "question": row["question"], "error": f"{type(e).__name__}: {e}"})
        return False


def _answer_batch(model, batch, max_new_tokens, temperature, on_result):
    """One left-padded generate call for [(row, token ids, media)]. A row too long for the context gives an
    error row (the batch is retried row by row to find it); the others are answered."""
    try:
        out = _generate(model, batch, max_new_tokens, temperature)
    except ContextLengthError as e:
        if len(batch) > 1:
            for one in batch:
                _answer_batch(model, [one], max_new_tokens, temperature, on_result)
        else:
            on_result({"id": batch[0][0]["id"], "question": batch[0][0]["question"], "error": f"ContextLengthError: {e}"})
        return
    for (row, _, _), toks in zip(batch, out):
        keep = until_eos(toks, model.config.decoder.eos_ids)
        on_result({"id": row["id"], "question": row["question"],
                   "answer": model.tokenizer.decode(keep, skip_special_tokens=True).strip()})


def _generate(model, batch, max_new_tokens, temperature):
    """(B, max_new_tokens) new tokens for one left-padded batch of [(row, token ids, media)]."""
    length = max(len(ids) for _, ids, _ in batch)
    input_ids = np.zeros((len(batch), length), np.int64)
    mask = np.zeros((len(batch), length), bool)
    for r, (_, ids, _) in enumerate(batch):
        input_ids[r, length - len(ids):] = ids
        mask[r, length - len(ids):] = True
    return model.generate(input_ids, mask, media=[m or None for _, _, m in batch], max_new_tokens=max_new_tokens,
                          temperature=temperature)
