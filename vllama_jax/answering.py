"""Batch answering: many questions about many media files, through `VideoLLaMA2Model.generate`.

    rows = read_questions("questions.jsonl")     # [{"id", "question", "video"|"image"|"audio", ...}]
    answer_rows(model, rows, batch_size=8, on_result=print)   # {"id", "question", "answer"} or {"id", "error"}

Rows are grouped into batches of the same media kind and similar prompt length (one compiled program per
bucket); media are decoded batch by batch, so memory holds one batch of videos however many rows there
are. An unreadable file or a prompt longer than the context gives an error row, never a crash.
Used by `vllama-jax answer`, `eval` and the demo.
"""
import json
import logging
import os

import numpy as np

from vllama_jax.generate import ContextLengthError
from vllama_jax.inference import until_eos
from vllama_jax.preprocess.conversation import build_prompt, tokenize_multimodal

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


def answer_rows(model, rows, batch_size=8, max_new_tokens=128, temperature=0.0, on_result=None, progress=True):
    """Answers for `rows`, calling on_result(dict) per row as soon as its batch is done.
    `progress=False`: no progress bar of its own (a caller feeding rows in chunks shows one overall).

    Prompts are tokenized up front (cheap) to group the rows; media are decoded batch by batch, so memory
    holds one batch of videos however many rows there are."""
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
    # Group by media kind, then by length, so a batch shares one compiled program and little padding.
    prompts.sort(key=lambda x: (x[0], x[1]))
    bar = tqdm(total=len(prompts), desc="answering", unit="q", disable=not progress)
    i = 0
    while i < len(prompts):
        j = i
        while j < len(prompts) and j - i < batch_size and prompts[j][0] == prompts[i][0]:
            j += 1
        batch = []
        for _, _, row, ids in prompts[i:j]:
            media = _load_media(model, row, on_result)
            if media is not False:
                batch.append((row, ids, media))
        if batch:
            _answer_batch(model, batch, max_new_tokens, temperature, on_result)
        bar.update(j - i)
        i = j
    bar.close()


def _load_media(model, row, on_result):
    """The row's decoded media (None for text), or False after reporting an error row for an unreadable file."""
    try:
        return model.load_media(video=row.get("video"), image=row.get("image"),
                                audio=True if row.get("av") else row.get("audio"),
                                start=row.get("start"), end=row.get("end"))
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
