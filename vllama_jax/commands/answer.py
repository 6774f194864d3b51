"""`vllama-jax answer --model DIR --input questions.jsonl --out answers.jsonl`: batch inference.

Each input line: {"id": ..., "question": "...", "video"|"image"|"audio": path, optional "start", "end",
"av": true}. Questions are grouped into batches of the same media kind and similar prompt length (one
compiled program per bucket). Resumable: ids already in the output are skipped. A file that cannot be
read gives an error row ({"id", "error"}), never a crash. Output rows: {"id", "question", "answer"}.
"""
import json
import logging
import os

import numpy as np

HELP = "answer many questions about many media files (batched, resumable)"
log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, help="questions.jsonl")
    p.add_argument("--out", required=True, help="answers.jsonl (appended; existing ids are skipped)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--num-frames", type=int)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--quantize", choices=("int8",), help="int8 weight-only decoder (per-channel scales): faster "
                   "memory-bound decoding on the CPU, logits within ~1%% of float32")


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

    from vllama_jax.preprocess.conversation import build_prompt, tokenize_multimodal

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
    from vllama_jax.generate import ContextLengthError
    from vllama_jax.inference import until_eos

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


def main(args) -> int:
    import jax.numpy as jnp

    import vllama_jax

    logging.basicConfig(level=logging.INFO)
    rows = read_questions(args.input)
    seen = done_ids(args.out)
    todo = [r for r in rows if r["id"] not in seen]
    log.info("%d questions, %d already answered, %d to do", len(rows), len(rows) - len(todo), len(todo))
    if not todo:
        return 0
    model = vllama_jax.load(args.model, dtype=getattr(jnp, args.dtype), num_frames=args.num_frames,
                            quantize=args.quantize)
    with open(args.out, "a") as f:
        def write(result):
            f.write(json.dumps(result) + "\n")
            f.flush()
        answer_rows(model, todo, args.batch_size, args.max_new_tokens, args.temperature, on_result=write)
    return 0
