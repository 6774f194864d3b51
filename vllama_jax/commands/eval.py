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

The run itself is vllama_jax/evaluation/run.py; questions go through vllama_jax/answering.py's batched,
length-bucketed inference, which decodes the videos batch by batch.
"""
import dataclasses
import logging
import os

from vllama_jax.commands.flags import add_model_flags

HELP = "evaluate on a video QA benchmark (multiple-choice or open-ended), reproducibly"
log = logging.getLogger(__name__)


def add_arguments(p):
    from vllama_jax.evaluation.datasets import LAYOUTS
    from vllama_jax.evaluation.prompts import MC_STYLES

    add_model_flags(p, context_help="longest prompt + answer in tokens (default: the decoder's "
                                    "max_position_embeddings); with --av the sound alone can take ~1500")
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
    p.add_argument("--av", action="store_true", help="give an audio-visual model each video's sound track too")


def main(args) -> int:
    from vllama_jax.evaluation.run import EvalSetup, run_eval

    logging.basicConfig(level=logging.INFO)
    fields = {f.name for f in dataclasses.fields(EvalSetup)}
    results = run_eval(EvalSetup(**{k: v for k, v in vars(args).items() if k in fields}))
    if results is None:
        return 2
    headline = {k: results[k] for k in ("accuracy", "accuracy_as_original", "exact_match", "contains_answer")
                if k in results}
    log.info("%s: %s, counts %s", os.path.join(args.out, "results.json"), headline, results["counts"])
    return 0
