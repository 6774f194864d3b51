"""From the model's answer text to scores: the option it picked, accuracy overall and per task.

    parse_option("(B) the cat", ["a dog", "the cat"], "mvbench") -> 1;   parse_option("no idea", ...) -> None
    summarize_mcqa(prediction_rows) / summarize_oqa(prediction_rows) -> {"accuracy", "counts", "per_task"}

Each benchmark's original inference script parses answers its own way (videollama2/eval/ on the original's
main branch). The steps are the same; only the details differ, so they are one parser and a table of
rules (`PARSE_RULES`, one `ParseRule` per style):

1. delete the words "answer" / "Answer" (so "Answer: B" is not read as option A);
2. take the first match of the rule's letter pattern anywhere in the text, strip spaces and parentheses;
   the rest must be one of the rule's letters (MVBench: ", B" is left of "Yes, B": no pick);
3. only when no letter matched at all: the rule's option-text fallback, if it has one.

Faithfully so: the patterns take any capital in the letter range, so "Based on the video, (C)" picks B as
the originals do. Where the original then falls back to option C silently, we return None and count the
answer "unparsable" (wrong). `accuracy_as_original` gives those rows option C, so it is the number the
original would print; `accuracy` is the honest one. Rows whose media could not be read are errors, wrong
in both. Accuracies are percentages of all evaluated rows (errors included), as the original prints them.
Overall accuracy is over all rows (not a mean of task means), as in eval_video_mcqa_mvbench.py.

Open-ended answers are graded by GPT in the original; we cannot call it, so `summarize_oqa` gives two
plain string scores (clearly not the GPT score) and commands/eval.py writes the file the original's
GPT grading script reads.
"""
from __future__ import annotations

import dataclasses
import re
import string
from typing import Dict, Iterable, List, Optional, Sequence

from vllama_jax.evaluation.datasets import LETTERS

ORIGINAL_FALLBACK_OPTION = 2  # every original script's guess when it cannot parse an answer: option C


@dataclasses.dataclass(frozen=True)
class ParseRule:
    """How one benchmark's original script reads an answer (module docstring for the steps).

    pattern: the regex whose first match is the letter, with `{letters}` for the letter range and one
        group around what the original keeps of the match;
    letters: the letters the original accepts; "" for the item's own (A up to its last option);
    text_fallback: with no letter, how an option's text is looked for in the lower-cased answer:
        "contains", "equals" (the whole answer is the option), or "" for no fallback;
    drop_last_char: the option text is read without its last character (Video-MME's choices end in ".");
    digit_words: a one-digit option also matches its English word ("3" -> "three").
    """
    pattern: str
    letters: str = ""
    text_fallback: str = ""
    drop_last_char: bool = False
    digit_words: bool = False


PARSE_RULES = {
    # inference_video_mcqa_mvbench.py lines 124-149 (`mvbench_dump`): commas count as padding, letters up to
    # the item's last option, then the first option whose text appears in the answer.
    "mvbench": ParseRule(r"([(, ]*[{letters}][), ]*)", text_fallback="contains"),
    # inference_video_mcqa_egoschema.py lines 83-102 (`egoschema_dump`): letters A-E always, no text fallback.
    "egoschema": ParseRule(r"([( ]*[{letters}][) ]*)", letters="ABCDE"),
    # inference_video_mcqa_perception_test_mcqa.py lines 128-147: parentheses only as padding, A-C; with no
    # letter, an answer that is exactly an option's text (lower-cased).
    "perception_test": ParseRule(r"(\(*[{letters}]\)*)", letters="ABC", text_fallback="equals"),
    # inference_video_mcqa_videomme.py lines 185-227 (`videomme_dump`): the group is the letter alone, A-D;
    # options are read from "A. text." by the regex '[A-D]\. (.*).' of line 267, which drops the last
    # character, and digits also match as words: so keep each choice's text after "A. " as it is, full stop
    # included. (eval_video_mcqa_videomme.py re-reads the one letter written, which changes nothing.)
    "videomme": ParseRule(r"[(\[ ]*([{letters}])[).\] ]*", letters="ABCD", text_fallback="contains",
                          drop_last_char=True, digit_words=True),
}

_DIGIT_WORDS = dict(zip("0123456789", "zero one two three four five six seven eight nine".split()))


def _option_named(text: str, options: Sequence[str], rule: ParseRule) -> Optional[int]:
    """Step 3: the first option whose text the answer names, by `rule`'s fallback; None if none does."""
    lowered = text.lower()
    for i, option in enumerate(options):
        names = {option[:-1] if rule.drop_last_char else option}
        if rule.digit_words:
            names |= {_DIGIT_WORDS.get(name, name) for name in names}
        names = {name.lower() for name in names}
        if (rule.text_fallback == "contains" and any(name in lowered for name in names)) \
                or (rule.text_fallback == "equals" and lowered in names):
            return i
    return None


def parse_option(text: str, options: Sequence[str], style: str = "mvbench") -> Optional[int]:
    """The option index the answer `text` names, by the rules of `style` (module docstring); None if none.

    A letter past the item's options (EgoSchema's "E" for a 4-option item) is no pick either."""
    rule = PARSE_RULES[style]
    letters = rule.letters or LETTERS[:len(options)]
    text = text.replace("answer", "").replace("Answer", "")
    match = re.search(rule.pattern.format(letters=f"{letters[0]}-{letters[-1]}"), text)
    if match is None:
        return _option_named(text, options, rule) if rule.text_fallback else None
    token = match.group(1).strip().strip("()")
    index = letters.find(token) if len(token) == 1 else -1
    return index if 0 <= index < len(options) else None


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
