"""Benchmark evaluation (`vllama-jax eval`), reproducible by construction.

    datasets.py         annotation files -> EvalItem list (normalized JSONL, the original's MVBench json,
                        EgoSchema's and Perception Test's question files); bad rows skipped and counted
    prompts.py          the instruction text of a question, worded as each benchmark's original script words it
    scoring.py          the predicted option parsed as each benchmark's original script parses it; accuracy
                        per task; open-ended exact-match / contains-answer scores
    reproducibility.py  what a result depends on: file hashes, versions, settings
    run.py              one run: batching, resuming, predictions.jsonl / results.json (`vllama-jax eval`)
"""
