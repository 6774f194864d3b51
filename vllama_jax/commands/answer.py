"""`vllama-jax answer --model DIR --input questions.jsonl --out answers.jsonl`: batch inference.

Each input line: {"id": ..., "question": "...", "video"|"image"|"audio": path, optional "start", "end",
"av": true}. Questions are grouped into batches of the same media kind and similar prompt length (one
compiled program per bucket; vllama_jax/answering.py); a file asked about several times is decoded once
(`--media-cache-mb`, default 1024; 0 turns it off). Resumable: ids already in the output are skipped. A
file that cannot be read gives an error row ({"id", "error"}), never a crash. Output rows: {"id", "question",
"answer"}.
"""
import json
import logging

from vllama_jax.commands.flags import add_model_flags, load_model

HELP = "answer many questions about many media files (batched, resumable)"
log = logging.getLogger(__name__)


def add_arguments(p):
    add_model_flags(p)
    p.add_argument("--input", required=True, help="questions.jsonl")
    p.add_argument("--out", required=True, help="answers.jsonl (appended; existing ids are skipped)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--media-cache-mb", type=float, default=1024,
                   help="decoded media kept for a file's other questions (0: decode for every question)")


def main(args) -> int:
    from vllama_jax.answering import answer_rows, done_ids, read_questions
    from vllama_jax.preprocess.media_cache import media_cache

    logging.basicConfig(level=logging.INFO)
    rows = read_questions(args.input)
    seen = done_ids(args.out)
    todo = [r for r in rows if r["id"] not in seen]
    log.info("%d questions, %d already answered, %d to do", len(rows), len(rows) - len(todo), len(todo))
    if not todo:
        return 0
    model = load_model(args)
    with open(args.out, "a") as f:
        def write(result):
            f.write(json.dumps(result) + "\n")
            f.flush()
        answer_rows(model, todo, args.batch_size, args.max_new_tokens, args.temperature, on_result=write,
                    media_cache=media_cache(args.media_cache_mb))
    return 0
