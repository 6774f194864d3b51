"""The demo's evaluation: held-out questions answered through `vllama-jax answer`'s batched path, scored.

    rows = answer_questions(model, questions, data_folder)   # + "answer", "correct" per question
    scores = score(rows, kinds) # {"overall", "chance", "categories", "stderr", "chance_by_kind", "counts"}
    gap = paired_difference(rows_a, rows_b, kinds)            # {kind: {"difference", "stderr"}}, same questions
    formats = by_format(rows)   # {"short" | "multiple_choice": {"accuracy", "stderr", "chance", "questions"}}

A question is right when the answer, lower-cased and stripped of punctuation, is the expected word
(for multiple choice: the right option's words, or its letter): exact match, no partial credit. A question the model
could not answer (an error row of the answer path) counts as wrong.

A held-out set of n questions measures an accuracy p to within a standard error of sqrt(p (1 - p) / n):
0.08 at n = 40, 0.05 at n = 100. Two models answer the same questions, so their difference is measured
per question (paired), which removes the questions' own difficulty from its error.
"""
from __future__ import annotations

import math
import os
import re
from typing import Dict, List, Sequence

from vllama_jax.answering import answer_rows


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text or "").lower().split())


def is_correct(answer, question: dict) -> bool:
    """`answer` (the model's text, or None) against the question's `answer` word, or its `letter` when it
    has one (multiple choice)."""
    accepted = {normalise(question["answer"])}
    if question.get("letter"):
        accepted.add(normalise(question["letter"]))
    return answer is not None and normalise(answer) in accepted


def answer_questions(model, questions: Sequence[dict], data_folder: str, batch_size: int = 16,
                     max_new_tokens: int = 4, media_cache=None) -> List[dict]:
    """Each question with `expected` (the right answer), the model's `answer` (or `error`) and `correct`,
    in the input order. `media_cache` (a MediaCache): the clips' decoded media, kept for the clip's other
    questions and for the other variant's model (both pre-process clips alike)."""
    inputs = [{"id": q["id"], "question": q["question"], "video": os.path.join(data_folder, q["video"]), "av": True}
              for q in questions]
    got: Dict[int, dict] = {}
    answer_rows(model, inputs, batch_size=batch_size, max_new_tokens=max_new_tokens,
                on_result=lambda r: got.update({r["id"]: r}), media_cache=media_cache)
    rows = []
    for q in questions:
        r = got.get(q["id"], {"error": "not answered"})
        row = dict(q, expected=q["answer"], answer=r.get("answer"), correct=is_correct(r.get("answer"), q))
        if "error" in r:
            row["error"] = r["error"]
        rows.append(row)
    return rows


def score(rows: Sequence[dict], kinds: Sequence[str]) -> dict:
    """Accuracy overall and per kind (`kinds`: the report's order; a kind with no question is left out)."""
    def mean(xs):
        xs = list(xs)
        return float(sum(xs) / len(xs)) if xs else None

    kinds = [k for k in kinds if any(r["kind"] == k for r in rows)]
    return {
        "overall": mean(r["correct"] for r in rows),
        "chance": mean(r["chance"] for r in rows),
        "categories": {k: mean(r["correct"] for r in rows if r["kind"] == k) for k in kinds},
        "stderr": dict({k: _stderr([r["correct"] for r in rows if r["kind"] == k]) for k in kinds},
                       overall=_stderr([r["correct"] for r in rows])),
        "chance_by_kind": {k: mean(r["chance"] for r in rows if r["kind"] == k) for k in kinds},
        "counts": {k: sum(r["kind"] == k for r in rows) for k in kinds},
        "errors": sum("error" in r for r in rows),
    }


def _stderr(xs: Sequence[float]) -> float:
    """The standard error of the mean of `xs` (0 for fewer than two)."""
    n = len(xs)
    if n < 2:
        return 0.0
    m = sum(xs) / n
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def paired_difference(rows_a: Sequence[dict], rows_b: Sequence[dict], kinds: Sequence[str]) -> Dict[str, dict]:
    """Accuracy of a minus accuracy of b, per kind and overall, on the questions both answered (matched
    by id), with the standard error of the per-question differences (-1, 0 or 1)."""
    b_by_id = {r["id"]: r for r in rows_b}
    pairs = [(r, b_by_id[r["id"]]) for r in rows_a if r["id"] in b_by_id]
    out = {}
    for k in [k for k in kinds if any(a["kind"] == k for a, _ in pairs)] + ["overall"]:
        d = [float(a["correct"]) - float(b["correct"]) for a, b in pairs if k == "overall" or a["kind"] == k]
        out[k] = {"difference": sum(d) / len(d), "stderr": _stderr(d), "questions": len(d)}
    return out


def answer_format(row: dict) -> str:
    return "multiple_choice" if row.get("options") else "short"


def by_format(rows: Sequence[dict]) -> Dict[str, dict]:
    """Accuracy of the short and of the multiple-choice questions (the same templates asked two ways: a
    model that reads the media but not the options scores well on the first only)."""
    out = {}
    for fmt in ("short", "multiple_choice"):
        picked = [r for r in rows if answer_format(r) == fmt]
        if picked:
            out[fmt] = {"accuracy": sum(r["correct"] for r in picked) / len(picked),
                        "stderr": _stderr([r["correct"] for r in picked]),
                        "chance": sum(r["chance"] for r in picked) / len(picked), "questions": len(picked)}
    return out


def by_template_format(rows: Sequence[dict]) -> Dict[str, Dict[str, float]]:
    """Accuracy per template and answer format: {"colour": {"short": 0.3, "multiple_choice": 0.25}, ...}."""
    out: Dict[str, Dict[str, List[bool]]] = {}
    for r in rows:
        out.setdefault(r["template"], {}).setdefault(answer_format(r), []).append(r["correct"])
    return {t: {f: sum(v) / len(v) for f, v in sorted(fs.items())} for t, fs in sorted(out.items())}


def by_template(rows: Sequence[dict]) -> Dict[str, float]:
    """Accuracy per question template ("direction", "pitch", ...): where a kind's score comes from."""
    out: Dict[str, List[bool]] = {}
    for r in rows:
        out.setdefault(r["template"], []).append(r["correct"])
    return {t: sum(v) / len(v) for t, v in sorted(out.items())}
