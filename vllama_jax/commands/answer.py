"""`vllama-jax answer --model DIR --input questions.jsonl --out answers.jsonl`: batch inference.

Each input line: {"id": ..., "question": "...", "video"|"image"|"audio": path, optional "start", "end",
"av": true}. Questions are grouped into batches of the same media kind and similar prompt length (one
compiled program per bucket; vllama_jax/answering.py). Resumable: ids already in the output are skipped. A
file that cannot be read gives an error row ({"id", "error"}), never a crash. Output rows: {"id", "question",
"answer"}.
"""
import json
import logging

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


def main(args) -> int:
    import jax.numpy as jnp

    import vllama_jax
    from vllama_jax.answering import answer_rows, done_ids, read_questions

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
