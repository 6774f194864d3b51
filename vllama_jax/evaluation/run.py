"""One reproducible benchmark run (`vllama-jax eval`): questions -> predictions.jsonl -> results.json.

    results = run_eval(EvalSetup(model=DIR, benchmark="mcqa", data="mvbench.jsonl", media_root=..., out=OUT))

- greedy decoding only, a fixed frame count, float32 unless asked otherwise, with float32 matrix products
  at full precision (GPUs would otherwise use TF32 and TPUs bfloat16 passes, each its own answers);
  batching does not change the answers (left-padded batches, tested against one question at a time);
- `style` words the questions and parses the answers as that benchmark's original script does
  (prompts.py, scoring.py);
- OUT/setup.json records everything the answers depend on (reproducibility.py). A rerun into the same
  OUT resumes: ids already in predictions.jsonl are not asked again, and a different setup is refused;
- OUT/predictions.jsonl: one row per question, the raw output and the parsed option ("pred": null when
  it names none), or {"error"} when its video could not be read;
- OUT/results.json: accuracy overall and per task, counts, the setup block, and "timing";
- open-ended QA (`oqa`): exact-match and contains-answer scores (NOT the papers' GPT score), and
  OUT/gpt_grading_input.jsonl for the original's GPT grading scripts.

Questions go through vllama_jax/answering.py's batched, length-bucketed inference.
"""
import dataclasses
import json
import logging
import os
import time
from typing import Optional

from tqdm import tqdm

import vllama_jax
from vllama_jax import answering
from vllama_jax.evaluation import prompts, reproducibility, scoring
from vllama_jax.evaluation.datasets import read_benchmark
from vllama_jax.loading import load_tokenizer, load_videollama2_config
from vllama_jax.preprocess.conversation import build_prompt
from vllama_jax.preprocess.media_cache import media_cache

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalSetup:
    """What one evaluation run is: the model, the annotations and every setting its answers depend on."""

    model: str
    benchmark: str  # "mcqa" | "oqa"
    data: str
    out: str
    media_root: str = ""
    layout: str = "auto"
    style: str = "mvbench"
    batch_size: int = 8
    max_new_tokens: int = 128
    num_frames: Optional[int] = None
    dtype: str = "float32"
    max_context: Optional[int] = None
    av: bool = False
    quantize: Optional[str] = None  # "int8": int8 weight-only decoding


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
    row = {"id": item.id, "task": item.task, "video": item.video, "question": item.question}
    if item.options is not None:
        row["options"] = list(item.options)
    row["answer"] = item.answer
    if "error" in result:
        row["error"] = result["error"]
    elif kind == "mcqa":
        row["output"] = result["answer"]
        row["pred"] = scoring.parse_option(result["answer"], item.options, style)
    else:
        row["pred"] = result["answer"]  # named as the original's GPT grading scripts read it
    return row


def generate_predictions(model, items, instructions, out_path, setup: "EvalSetup"):
    """Answers for `items`, appended to out_path as each batch finishes."""
    by_id = {item.id: item for item in items}
    rows = [{"id": item.id, "question": instructions[item.id], "video": item.video, "start": item.start,
             "end": item.end, "av": setup.av} for item in items]
    with open(out_path, "a") as f, tqdm(total=len(rows), desc="evaluating", unit="q") as bar:
        def write(result):
            row = prediction_row(by_id[result["id"]], result, setup.benchmark, setup.style)
            f.write(json.dumps(row) + "\n")
            f.flush()
            bar.update(1)

        answering.answer_rows(model, rows, setup.batch_size, setup.max_new_tokens, 0.0, on_result=write,
                              progress=False, media_cache=media_cache(answering.DEFAULT_MEDIA_CACHE_MB))


def matmul_precision(dtype: str) -> str:
    return "highest" if dtype == "float32" else "default"


def setup_block(setup: "EvalSetup", items, instructions, tokenizer, cfg):
    """What the answers depend on (setup.json): files' hashes, versions, settings, one rendered prompt."""
    example = None
    if items:
        example = build_prompt([{"role": "user", "content": instructions[items[0].id]}], cfg.decoder.family,
                               tokenizer, "video")
    mcqa = setup.benchmark == "mcqa"
    return reproducibility.describe(setup.model, setup.data, {
        "benchmark": setup.benchmark, "layout": setup.layout, "media_root": os.path.abspath(setup.media_root),
        "dtype": setup.dtype, "matmul_precision": matmul_precision(setup.dtype),
        "num_frames": setup.num_frames or cfg.num_frames, "decoding": "greedy", "max_new_tokens": setup.max_new_tokens,
        "max_context": setup.max_context or cfg.decoder.max_position_embeddings, "audio_visual": setup.av,
        "style": setup.style if mcqa else None,
        "prompt_template": prompts.template(setup.benchmark, setup.style),
        "answer_parser": dataclasses.asdict(scoring.PARSE_RULES[setup.style]) if mcqa else None,
        "example_prompt": example,
        # Only when set, so folders of float32 runs made before the option existed still resume.
        **({"quantize": setup.quantize} if setup.quantize else {}),
    })


def check_setup(path, block) -> bool:
    """Write setup.json, or compare with the one a previous run left: False (and why) when they differ."""
    if os.path.exists(path):
        with open(path) as f:
            changed = reproducibility.differences(json.load(f), block)
        if changed:
            log.error("%s holds a run with a different setup (%s): its predictions cannot be mixed with this "
                      "one's; use another --out", os.path.dirname(path), ", ".join(changed))
            return False
        return True
    with open(path, "w") as f:
        json.dump(block, f, indent=1)
    return True


def summarize(setup: "EvalSetup", items, predictions, skipped, block, seconds, generated):
    rows = [predictions[item.id] for item in items]
    stats = (scoring.summarize_mcqa if setup.benchmark == "mcqa" else scoring.summarize_oqa)(rows)
    # The overall stats split in two: the headline scores, and the counts that say what they are over.
    overall = dict(stats["overall"])
    overall.pop("correct", None)
    counts = {k: overall.pop(k) for k in ("total", "answered", "unparsable", "errors") if k in overall}
    counts["skipped_rows"] = len(skipped)
    scores = overall
    if setup.benchmark == "mcqa":
        note = ("accuracy: percent of all rows, an unparsable answer or unreadable video counted wrong; "
                "accuracy_as_original: unparsable answers given option C, as the original's scripts do")
    else:
        note = ("exact_match / contains_answer: plain string scores, NOT the GPT-graded accuracy and score the "
                "original reports; grade gpt_grading_input.jsonl with its eval_video_oqa_*.py scripts for those")
    return {"benchmark": setup.benchmark, **scores, "note": note, "counts": counts, "per_task": stats["per_task"],
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


def run_eval(setup: EvalSetup) -> dict:
    """Ask every question of `setup.data` not yet in OUT/predictions.jsonl, then write OUT/results.json
    (and OUT/gpt_grading_input.jsonl for oqa). Returns the results; None when OUT holds another setup."""
    import jax
    import jax.numpy as jnp

    began = time.time()
    items, skipped = read_benchmark(setup.data, setup.media_root, setup.benchmark, setup.layout)
    instructions = {item.id: prompts.instruction(item, setup.style) for item in items}
    os.makedirs(setup.out, exist_ok=True)
    pred_path = os.path.join(setup.out, "predictions.jsonl")
    seen = read_predictions(pred_path)
    todo = [item for item in items if item.id not in seen]
    log.info("%d questions (%d annotation rows skipped), %d already answered, %d to do",
             len(items), len(skipped), len(items) - len(todo), len(todo))

    block = setup_block(setup, items, instructions, load_tokenizer(setup.model), load_videollama2_config(setup.model)[0])
    if not check_setup(os.path.join(setup.out, "setup.json"), block):
        return None
    if todo:
        model = vllama_jax.load(setup.model, dtype=getattr(jnp, setup.dtype), num_frames=setup.num_frames,
                                max_context=setup.max_context, quantize=setup.quantize)
        # Scoped, not global: the setting is part of what is compiled, and callers in the same process
        # (tests, notebooks) keep theirs.
        with jax.default_matmul_precision(matmul_precision(setup.dtype)):
            generate_predictions(model, todo, instructions, pred_path, setup)

    predictions = read_predictions(pred_path)
    results = summarize(setup, items, predictions, skipped, block, time.time() - began, len(todo))
    with open(os.path.join(setup.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if setup.benchmark == "oqa":
        write_gpt_grading_input(os.path.join(setup.out, "gpt_grading_input.jsonl"), items, predictions)
    return results
