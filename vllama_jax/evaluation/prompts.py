"""The instruction text of a benchmark question, worded exactly as the original's eval scripts word it.

    instruction(item, "mvbench") -> "Question: What moves?\\nOptions:\\n(A) a cat\\n(B) a dog\\nAnswer with ..."

The instruction is the user turn; `preprocess.conversation.build_prompt` then puts the "<video>" tag and
a newline in front, adds the Mistral / Mixtral system message and applies the chat template, as the
original's `mm_infer` does. Multiple-choice wordings (videollama2/eval/ on the original's main branch):

- "mvbench": inference_video_mcqa_mvbench.py (the `instruct` of `MVBenchDataset`);
- "perception_test": inference_video_mcqa_perception_test_mcqa.py line 61, the same text for its three options;
- "egoschema": inference_video_mcqa_egoschema.py, ends with "The best answer is: ".
- "videomme": inference_video_mcqa_videomme.py without subtitles; the data's choices come as "A. text",
  so options are written that way. Its "(A, B, C, or D)" is spelled out for the item's own letters.

The style names are those of scoring.PARSE_RULES too: `--style` picks a benchmark's wording and its answer
parsing together.

Open-ended questions are asked as they are, as inference_video_oqa_activitynet.py does.
"""
from __future__ import annotations

import dataclasses

from vllama_jax.evaluation.datasets import LETTERS, EvalItem

_ANSWER_WITH_LETTER = "Answer with the option's letter from the given choices directly and only give the best option."
_SELECT_BEST = "Select the best answer to the following multiple-choice question based on the video."


@dataclasses.dataclass(frozen=True)
class MCStyle:
    """A multiple-choice wording: head (with {question}, {letters}), one line per option, tail."""
    head: str
    option: str
    tail: str

    def render(self, question: str, options) -> str:
        letters = LETTERS[:len(options)]
        spelled = ", ".join(letters[:-1]) + ", or " + letters[-1]
        lines = "".join(self.option.format(letter=l, option=o) for l, o in zip(letters, options))
        return self.head.format(question=question, letters=spelled) + lines + self.tail


_QUESTION_OPTIONS = MCStyle("Question: {question}\nOptions:\n", "({letter}) {option}\n", _ANSWER_WITH_LETTER)

MC_STYLES = {
    "mvbench": _QUESTION_OPTIONS,
    "perception_test": _QUESTION_OPTIONS,
    "egoschema": MCStyle(_SELECT_BEST + "\n{question}\nOptions:\n", "({letter}) {option}\n",
                         _ANSWER_WITH_LETTER + " The best answer is: "),
    "videomme": MCStyle(_SELECT_BEST + " Respond with only the letter ({letters}) of the correct option.\n{question}\n",
                        "{letter}. {option}\n", _ANSWER_WITH_LETTER + " The best answer is: "),
}


def instruction(item: EvalItem, style: str = "mvbench") -> str:
    """The user-turn text for `item`: the multiple-choice wording of `style`, or the bare open question."""
    if item.options is None:
        return item.question
    return MC_STYLES[style].render(item.question, item.options)


def template(kind: str, style: str) -> dict:
    """The wording as data, for results.json."""
    if kind == "oqa":
        return {"instruction": "{question}"}
    return dataclasses.asdict(MC_STYLES[style])
