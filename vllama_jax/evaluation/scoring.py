"""From the model's answer text to scores: the option it picked, accuracy overall and per task.

    parse_option("(B) the cat", ["a dog", "the cat"]) -> 1;   parse_option("no idea", ...) -> None
    summarize_mcqa(prediction_rows) / summarize_oqa(prediction_rows) -> {"accuracy", "counts", "per_task"}

`parse_option` follows the original's MVBench parser (videollama2/eval/inference_video_mcqa_mvbench.py,
`mvbench_dump`; the EgoSchema, Perception Test and Video-MME parsers differ only in their fallbacks):

1. delete the words "answer" / "Answer" (so "Answer: B" is not read as option A);
2. take the first option letter standing anywhere in the text, with the parentheses, commas and spaces
   around it; once those are stripped it must be a bare letter ("Yes, B" leaves ", B": no pick);
3. with no letter at all, the first option whose text (lower-cased) appears in the answer.

Faithfully so: any capital in the option range counts, "Based on the video, (C)" picks B as the
original does. Where the original then falls back to option C silently, we return None and count the
answer "unparsable" (wrong). `accuracy_as_original` gives those rows option C, so it is the number the
original would print; `accuracy` is the honest one. Rows whose media could not be read are errors, wrong
in both. Accuracies are percentages of all evaluated rows (errors included), as the original prints them.
Overall accuracy is over all rows (not a mean of task means), as in eval_video_mcqa_mvbench.py.

Open-ended answers are graded by GPT in the original; we cannot call it, so `summarize_oqa` gives two
plain string scores (clearly not the GPT score) and commands/eval.py writes the file the original's
GPT grading script reads.
"""
from __future__ import annotations

import re
import string
from typing import Dict, Iterable, List, Optional, Sequence

from vllama_jax.evaluation.benchmarks import LETTERS

ORIGINAL_FALLBACK_OPTION = 2  # the original's guess when it cannot parse an answer: option C


def parse_option(text: str, options: Sequence[str]) -> Optional[int]:
    """The option index the answer `text` names, by the original's rules (module docstring); None if none."""
    letters = list(LETTERS[:len(options)])
    text = text.replace("answer", "").replace("Answer", "")
    match = re.search(rf"[(, ]*[{letters[0]}-{letters[-1]}][), ]*", text)
    if match:
        token = match.group(0).strip().strip("()")
        return letters.index(token) if token in letters else None
    lowered = text.lower()
    return next((i for i, option in enumerate(options) if option.lower() in lowered), None)


def _percent(n: int, total: int) -> float:
    return 100.0 * n / total if total else 0.0


def _mcqa_stats(rows: List[dict]) -> dict:
    errors = sum("error" in r for r in rows)
    unparsable = sum("error" not in r and r["pred"] is None for r in rows)
    correct = sum("error" not in r and r["pred"] == r["answer"] for r in rows)
    as_original = sum("error" not in r and (ORIGINAL_FALLBACK_OPTION if r["pred"] is None else r["pred"]) == r["answer"]
                      for r in rows)
    return {"accuracy": _percent(correct, len(rows)), "accuracy_as_original": _percent(as_original, len(rows)),
            "total": len(rows), "correct": correct, "answered": len(rows) - errors, "unparsable": unparsable,
            "errors": errors}


def normalize_text(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: "The  Cat!" -> "the cat"."""
    text = text.lower().translate(str.maketrans({c: " " for c in string.punctuation}))
    return " ".join(text.split())


def exact_match(pred: str, answer: str) -> bool:
    return normalize_text(pred) == normalize_text(answer)


def contains_answer(pred: str, answer: str) -> bool:
    """The reference answer appears in the prediction as whole words ("a black cat" contains "cat")."""
    want = normalize_text(answer)
    return bool(want) and f" {want} " in f" {normalize_text(pred)} "


def _oqa_stats(rows: List[dict]) -> dict:
    answered = [r for r in rows if "error" not in r]
    exact = sum(exact_match(r["pred"], r["answer"]) for r in answered)
    contains = sum(contains_answer(r["pred"], r["answer"]) for r in answered)
    return {"exact_match": _percent(exact, len(rows)), "contains_answer": _percent(contains, len(rows)),
            "total": len(rows), "answered": len(answered), "errors": len(rows) - len(answered)}


def _summarize(rows: Iterable[dict], stats) -> Dict[str, dict]:
    rows = list(rows)
    tasks: Dict[str, List[dict]] = {}
    for r in rows:
        tasks.setdefault(r["task"], []).append(r)
    return {"overall": stats(rows), "per_task": {t: stats(rs) for t, rs in tasks.items()}}


def summarize_mcqa(rows: Iterable[dict]) -> Dict[str, dict]:
    """Prediction rows ({"task", "answer": index, "pred": index | None} or {"task", "error"}) -> stats."""
    return _summarize(rows, _mcqa_stats)


def summarize_oqa(rows: Iterable[dict]) -> Dict[str, dict]:
    """Prediction rows ({"task", "answer": text, "pred": text} or {"task", "error"}) -> stats."""
    return _summarize(rows, _oqa_stats)
