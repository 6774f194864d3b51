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


def answer_rows(model, rows, batch_size=8, max_new_tokens=128, temperature=0.0, on_result=None):
    """Answers for `rows`, calling on_result(dict) per row as soon as its batch is done."""
    from tqdm import tqdm

    from vllama_jax.inference import until_eos
    from vllama_jax.preprocess.conversation import build_prompt, tokenize_multimodal

    tok = model.tokenizer
    family = model.config.decoder.family
    prepared = []
    for row in rows:
        kind = media_kind(row)
        try:
            media = model.load_media(video=row.get("video"), image=row.get("image"),
                                     audio=True if row.get("av") else row.get("audio"),
                                     start=row.get("start"), end=row.get("end"))
        except Exception as e:  # an unreadable file: an error row, the run goes on
            on_result({"id": row["id"], "question": row["question"], "error": f"{type(e).__name__}: {e}"})
            continue
        modal = kind.split("+")[0] if kind != "text" else None
        # build_prompt puts the modal tag (or, for text alone, the newline) in front, as the original does.
        prompt = build_prompt([{"role": "user", "content": row["question"]}], family, tok, modal)
        ids = tokenize_multimodal(prompt, tok)
        prepared.append((kind, len(ids), row, ids, media))
    # Group by media kind, then by length, so a batch shares one compiled program and little padding.
    prepared.sort(key=lambda x: (x[0], x[1]))
    bar = tqdm(total=len(prepared), desc="answering", unit="q")
    i = 0
    while i < len(prepared):
        j = i
        while j < len(prepared) and j - i < batch_size and prepared[j][0] == prepared[i][0]:
            j += 1
        group = prepared[i:j]
        length = max(g[1] for g in group)
        ids = np.zeros((len(group), length), np.int64)
        mask = np.zeros((len(group), length), bool)
        for r, g in enumerate(group):  # left padding
            ids[r, length - g[1]:] = g[3]
            mask[r, length - g[1]:] = True
        out = model.generate(ids, mask, media=[g[4] or None for g in group], max_new_tokens=max_new_tokens,
                             temperature=temperature)
        for g, toks in zip(group, out):
            keep = until_eos(toks, model.config.decoder.eos_ids)
            on_result({"id": g[2]["id"], "question": g[2]["question"],
                       "answer": tok.decode(keep, skip_special_tokens=True).strip()})
        bar.update(len(group))
        i = j
    bar.close()


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
    model = vllama_jax.load(args.model, dtype=getattr(jnp, args.dtype), num_frames=args.num_frames)
    with open(args.out, "a") as f:
        def write(result):
            f.write(json.dumps(result) + "\n")
            f.flush()
        answer_rows(model, todo, args.batch_size, args.max_new_tokens, args.temperature, on_result=write)
    return 0
