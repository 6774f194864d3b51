"""`vllama-jax eval --model DIR --benchmark mcqa|oqa --data ANNOTATIONS --media-root DIR --out OUTDIR`.

Benchmark evaluation that reproduces by construction:

- greedy decoding only, a fixed frame count, float32 unless asked otherwise, with float32 matrix products
  at full precision (GPUs would otherwise use TF32 and TPUs bfloat16 passes, each its own answers);
  batching does not change the answers (left-padded batches, tested against one question at a time);
- `--style mvbench|egoschema|perception_test|videomme` words the questions and parses the answers as
  that benchmark's original script does (evaluation/prompts.py, evaluation/scoring.py);
- OUTDIR/setup.json records everything the answers depend on (evaluation/reproducibility.py: sha256 of
  the model's files and of the annotations, library versions, dtype, frames, tokens, context length, the
  prompt wording, the answer-parsing rule and one fully rendered prompt). A rerun into the same OUTDIR
  resumes: ids already in predictions.jsonl are not asked again, and a different setup is refused rather
  than mixed in;
- OUTDIR/predictions.jsonl: one row per question, the model's raw output and the parsed option
  ("pred": null when it names none), or {"error"} when its video could not be read (an error row counts
  as answered for resuming: delete it to ask again);
- OUTDIR/results.json: accuracy overall and per task, counts (total, answered, unparsable, errors,
  skipped annotation rows), the setup block, and "timing" (the only part that changes on a rerun);
- open-ended QA (`oqa`): exact-match and contains-answer scores, which are NOT the GPT score the papers
  report; OUTDIR/gpt_grading_input.jsonl is the file the original's GPT grading scripts
  (videollama2/eval/eval_video_oqa_*.py --pred-path) read, so it can be graded there.

Questions go through `commands/answer.py`'s batched, length-bucketed inference, which decodes the
videos batch by batch.
"""
import dataclasses
import json
import logging
import os
import time

HELP = "evaluate on a video QA benchmark (multiple-choice or open-ended), reproducibly"
log = logging.getLogger(__name__)


def add_arguments(p):
    from vllama_jax.evaluation.benchmarks import LAYOUTS
    from vllama_jax.evaluation.prompts import MC_STYLES

    p.add_argument("--model", required=True, help="VideoLLaMA 2 checkpoint folder")
    p.add_argument("--benchmark", required=True, choices=("mcqa", "oqa"),
                   help="mcqa: multiple-choice (MVBench, EgoSchema, Perception Test, Video-MME); oqa: open-ended")
    p.add_argument("--data", required=True, help="annotations: normalized .jsonl, the original's MVBench .json "
                                                 "file / folder of them, or EgoSchema's / Perception Test's .json")
    p.add_argument("--media-root", default="", help="folder the annotations' video paths are relative to")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes it)")
    p.add_argument("--layout", default="auto", choices=("auto",) + LAYOUTS,
                   help="annotation layout; auto: .jsonl is normalized, anything else MVBench")
    p.add_argument("--style", default="mvbench", choices=sorted(MC_STYLES),
                   help="multiple-choice question wording and answer parsing of the original's script for "
                        "that benchmark")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--num-frames", type=int, help="frames per video (default: the checkpoint's)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--quantize", choices=("int8",), help="int8 weight-only decoder (per-channel scales): faster "
                   "memory-bound decoding on the CPU, logits within ~1%% of float32")
    p.add_argument("--max-context", type=int, help="longest prompt + answer in tokens (default: the decoder's "
                                                   "max_position_embeddings); with --av the sound alone can take ~1500")
    p.add_argument("--av", action="store_true", help="give an audio-visual model each video's sound track too")


def read_predictions(path):
    """{id: row} of predictions.jsonl, the last row of an id winning; a torn last line is ignored."""
    rows = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                    rows[row["id"]] = row
                except (ValueError, KeyError, TypeError):
                    log.warning("%s: an unreadable line ignored", path)
    return rows


def prediction_row(item, result, kind, style):
    """One predictions.jsonl row from an item and `answer_rows`' result for it."""
    from vllama_jax.evaluation.scoring import parse_option

    row = {"id": item.id, "task": item.task, "video": item.video, "question": item.question}
    if item.options is not None:
        row["options"] = list(item.options)
    row["answer"] = item.answer
    if "error" in result:
        row["error"] = result["error"]
    elif kind == "mcqa":
        row["output"] = result["answer"]
        row["pred"] = parse_option(result["answer"], item.options, style)
    else:
        row["pred"] = result["answer"]  # named as the original's GPT grading scripts read it
    return row


def generate_predictions(model, items, instructions, out_path, args):
    """Answers for `items`, appended to out_path as each batch finishes."""
    from tqdm import tqdm

    from vllama_jax.commands.answer import answer_rows

    by_id = {item.id: item for item in items}
    rows = [{"id": item.id, "question": instructions[item.id], "video": item.video, "start": item.start,
             "end": item.end, "av": args.av} for item in items]
    with open(out_path, "a") as f, tqdm(total=len(rows), desc="evaluating", unit="q") as bar:
        def write(result):
            row = prediction_row(by_id[result["id"]], result, args.benchmark, args.style)
            f.write(json.dumps(row) + "\n")
            f.flush()
            bar.update(1)

        answer_rows(model, rows, args.batch_size, args.max_new_tokens, 0.0, on_result=write, progress=False)


def matmul_precision(dtype: str) -> str:
    return "highest" if dtype == "float32" else "default"


def setup_block(args, items, instructions, tokenizer, cfg):
    from vllama_jax.evaluation import prompts, reproducibility, scoring
    from vllama_jax.preprocess.conversation import build_prompt

    example = None
    if items:
        example = build_prompt([{"role": "user", "content": instructions[items[0].id]}], cfg.decoder.family,
                               tokenizer, "video")
    mcqa = args.benchmark == "mcqa"
    return reproducibility.describe(args.model, args.data, {
        "benchmark": args.benchmark, "layout": args.layout, "media_root": os.path.abspath(args.media_root),
        "dtype": args.dtype, "matmul_precision": matmul_precision(args.dtype),
        "num_frames": args.num_frames or cfg.num_frames, "decoding": "greedy", "max_new_tokens": args.max_new_tokens,
        "max_context": args.max_context or cfg.decoder.max_position_embeddings, "audio_visual": args.av,
        "style": args.style if mcqa else None,
        "prompt_template": prompts.template(args.benchmark, args.style),
        "answer_parser": dataclasses.asdict(scoring.PARSE_RULES[args.style]) if mcqa else None,
        "example_prompt": example,
        # Only when set, so folders of float32 runs made before the option existed still resume.
        **({"quantize": args.quantize} if getattr(args, "quantize", None) else {}),
    })


def check_setup(path, block) -> bool:
    """Write setup.json, or compare with the one a previous run left: False (and why) when they differ."""
    from vllama_jax.evaluation.reproducibility import differences

    if os.path.exists(path):
        with open(path) as f:
            changed = differences(json.load(f), block)
        if changed:
            log.error("%s holds a run with a different setup (%s): its predictions cannot be mixed with this "
                      "one's; use another --out", os.path.dirname(path), ", ".join(changed))
            return False
        return True
    with open(path, "w") as f:
        json.dump(block, f, indent=1)
    return True


def summarize(args, items, predictions, skipped, block, seconds, generated):
    from vllama_jax.evaluation.scoring import summarize_mcqa, summarize_oqa

    rows = [predictions[item.id] for item in items]
    stats = (summarize_mcqa if args.benchmark == "mcqa" else summarize_oqa)(rows)
    # The overall stats split in two: the headline scores, and the counts that say what they are over.
    overall = dict(stats["overall"])
    overall.pop("correct", None)
    counts = {k: overall.pop(k) for k in ("total", "answered", "unparsable", "errors") if k in overall}
    counts["skipped_rows"] = len(skipped)
    scores = overall
    if args.benchmark == "mcqa":
        note = ("accuracy: percent of all rows, an unparsable answer or unreadable video counted wrong; "
                "accuracy_as_original: unparsable answers given option C, as the original's scripts do")
    else:
        note = ("exact_match / contains_answer: plain string scores, NOT the GPT-graded accuracy and score the "
                "original reports; grade gpt_grading_input.jsonl with its eval_video_oqa_*.py scripts for those")
    return {"benchmark": args.benchmark, **scores, "note": note, "counts": counts, "per_task": stats["per_task"],
            "skipped": skipped, "reproducibility": block,
            "timing": {"seconds": round(seconds, 3), "generated_this_run": generated}}


def write_gpt_grading_input(path, items, predictions):
    """The rows the original's eval_video_oqa_*.py read (--pred-path): id, question, reference answer, pred."""
    with open(path, "w") as f:
        for item in items:
            row = predictions[item.id]
            # The original writes "error" as the prediction when inference fails: so do we.
            f.write(json.dumps({"id": row["id"], "question": row["question"], "answer": row["answer"],
                                "pred": row.get("pred", "error")}) + "\n")


def main(args) -> int:
    import jax
    import jax.numpy as jnp

    import vllama_jax
    from vllama_jax.evaluation.benchmarks import read_benchmark
    from vllama_jax.evaluation.prompts import instruction
    from vllama_jax.inference import load_tokenizer
    from vllama_jax.loading import load_videollama2_config

    logging.basicConfig(level=logging.INFO)
    began = time.time()
    items, skipped = read_benchmark(args.data, args.media_root, args.benchmark, args.layout)
    instructions = {item.id: instruction(item, args.style) for item in items}
    os.makedirs(args.out, exist_ok=True)
    pred_path = os.path.join(args.out, "predictions.jsonl")
    seen = read_predictions(pred_path)
    todo = [item for item in items if item.id not in seen]
    log.info("%d questions (%d annotation rows skipped), %d already answered, %d to do",
             len(items), len(skipped), len(items) - len(todo), len(todo))

    block = setup_block(args, items, instructions, load_tokenizer(args.model), load_videollama2_config(args.model)[0])
    if not check_setup(os.path.join(args.out, "setup.json"), block):
        return 2
    if todo:
        model = vllama_jax.load(args.model, dtype=getattr(jnp, args.dtype), num_frames=args.num_frames,
                                max_context=args.max_context, quantize=args.quantize)
        # Scoped, not global: the setting is part of what is compiled, and callers in the same process
        # (tests, notebooks) keep theirs.
        with jax.default_matmul_precision(matmul_precision(args.dtype)):
            generate_predictions(model, todo, instructions, pred_path, args)

    predictions = read_predictions(pred_path)
    results = summarize(args, items, predictions, skipped, block, time.time() - began, len(todo))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if args.benchmark == "oqa":
        write_gpt_grading_input(os.path.join(args.out, "gpt_grading_input.jsonl"), items, predictions)
    headline = {k: results[k] for k in ("accuracy", "accuracy_as_original", "exact_match", "contains_answer")
                if k in results}
    log.info("%s: %s, counts %s", os.path.join(args.out, "results.json"), headline, results["counts"])
    return 0
