"""Benchmark evaluation (`vllama-jax eval`), reproducible by construction.

    benchmarks.py       annotation files -> EvalItem list (normalized JSONL, the original's MVBench json);
                        bad rows skipped and counted
    prompts.py          the instruction text of a question, worded as the original's eval scripts word it
    scoring.py          the predicted option parsed as the original parses it; accuracy per task; open-ended
                        exact-match / contains-answer scores
    reproducibility.py  what a result depends on: file hashes, versions, settings

The command itself (batching, resuming, writing predictions.jsonl / results.json) is
vllama_jax/commands/eval.py.
"""
