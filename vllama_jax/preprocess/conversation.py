"""Chat prompts and multimodal tokenization, for inference and training, as VideoLLaMA 2 builds them.

    build_prompt(messages, family, tokenizer, modal)       -> prompt text ending where the answer starts
    tokenize_multimodal(text, tokenizer)                   -> ids, a placeholder id where each tag was
    tokenize_conversation(conversations, tokenizer, family, model_max_length) -> (input_ids, labels)

A modal tag ("<video>", "<image>", "<audio>") in the text marks where the model writes the media
features; `tokenize_multimodal` turns it into the placeholder id -201 / -200 / -202 (config.py). An
audio-visual sample uses the one "<video>" tag: its audio features follow the video's.

The text comes from the tokenizer's own chat template. A tokenizer without one gets the template of
its decoder family: Mistral / Mixtral the Mistral-Instruct one, which puts the system message before
the first user turn (`<s> [INST] {system}\\n\\n{user} [/INST] {answer}</s> [INST] ...`), Qwen2 ChatML
with Qwen2-Instruct's default system turn. At inference the original gives Mistral and Mixtral the
Llama-2 style system message below; Qwen2 none (its template adds its own). Training prompts carry no
system message, as in the original.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

from vllama_jax.config import DECODER_FAMILIES, IGNORE_INDEX, MODAL_TOKEN_INDEX

# The system message of the original's inference (`mm_infer`) for Mistral / Mixtral, word for word
# (the two spaces after "safe." included).
MISTRAL_SYSTEM_MESSAGE = (
    "<<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
    "while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, "
    "dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive "
    "in nature.\nIf a question does not make any sense, or is not factually coherent, explain why instead "
    "of answering something not correct. If you don't know the answer to a question, please don't share "
    "false information.\n<</SYS>>"
)

# Jinja chat templates for tokenizers that carry none, rendering as the released tokenizers' do.
MISTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set turns = messages[1:] %}{%- else %}{%- set turns = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for m in turns %}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('roles must alternate user/assistant after an optional system message') }}{%- endif %}"
    "{%- if m['role'] == 'user' %}"
    "{%- if loop.first and system is defined %}{{- ' [INST] ' + system + '\\n\\n' + m['content'] + ' [/INST]' }}"
    "{%- else %}{{- ' [INST] ' + m['content'] + ' [/INST]' }}{%- endif %}"
    "{%- else %}{{- ' ' + m['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
CHATML_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if loop.first and m['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
FAMILY_TEMPLATES = {"mistral": MISTRAL_TEMPLATE, "mixtral": MISTRAL_TEMPLATE, "qwen2": CHATML_TEMPLATE}
FAMILY_SYSTEM_MESSAGES = {"mistral": MISTRAL_SYSTEM_MESSAGE, "mixtral": MISTRAL_SYSTEM_MESSAGE, "qwen2": None}

# Modal names -> tags; "av" (a video with its sound) shares the video tag.
MODAL_TAGS = {"image": "<image>", "video": "<video>", "av": "<video>", "audio": "<audio>"}
_TAG_PATTERN = re.compile("(" + "|".join(re.escape(t) for t in MODAL_TOKEN_INDEX) + ")")
_ROLES = {"human": "user", "gpt": "assistant"}


def _check_family(family: str):
    if family not in DECODER_FAMILIES:
        raise ValueError(f"decoder family '{family}' is not one of {DECODER_FAMILIES}")


def render(messages: Sequence[Dict[str, str]], family: str, tokenizer, add_generation_prompt: bool) -> str:
    """The chat template's text for `messages`: the tokenizer's own template, else the family's."""
    _check_family(family)
    template = getattr(tokenizer, "chat_template", None) or FAMILY_TEMPLATES[family]
    return tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def build_prompt(messages: Sequence[Dict[str, str]], family: str, tokenizer, modal: Optional[str] = None,
                 system: Optional[str] = None) -> str:
    """The inference prompt for a conversation that ends with a user turn.

    The first user turn gets the modal tag and a newline in front (unless it already holds a tag), as
    the original's `mm_infer` does; with `modal=None` it gets the bare newline, as the original's text
    mode does. `system=None` uses the family's system message (Mistral / Mixtral), a string replaces
    it, "" drops it; a conversation that starts with a system turn keeps its own.
    """
    _check_family(family)
    if modal is not None and modal not in MODAL_TAGS and modal not in MODAL_TOKEN_INDEX:
        raise ValueError(f"modal must be one of {sorted(MODAL_TAGS)} or None, got {modal!r}")
    messages = [dict(m) for m in messages]
    first_user = next((m for m in messages if m["role"] == "user"), None)
    if first_user is None:
        raise ValueError("build_prompt needs at least one user message")
    if not _TAG_PATTERN.search(first_user["content"]):
        tag = "" if modal is None else MODAL_TAGS.get(modal, modal)
        first_user["content"] = tag + "\n" + first_user["content"]
    if messages[0]["role"] != "system":
        system = FAMILY_SYSTEM_MESSAGES[family] if system is None else system
        if system:
            messages.insert(0, {"role": "system", "content": system})
    return render(messages, family, tokenizer, add_generation_prompt=True)


def tokenize_multimodal(text: str, tokenizer) -> List[int]:
    """Token ids of `text`, each modal tag replaced by its placeholder id.

    The text between tags is tokenized piece by piece without special tokens (a BOS comes only from
    the template's own "<s>" text), as the original's `tokenizer_multimodal_token` does.
    """
    ids: List[int] = []
    for piece in _TAG_PATTERN.split(text):
        if piece in MODAL_TOKEN_INDEX:
            ids.append(MODAL_TOKEN_INDEX[piece])
        elif piece:
            ids.extend(tokenizer(piece, add_special_tokens=False).input_ids)
    return ids


def _tag_first(value: str) -> str:
    """Move a modal tag to the head of its turn, followed by a newline (the original's data loader)."""
    for tag in MODAL_TOKEN_INDEX:
        if tag in value:
            value = (tag + "\n" + value.replace(tag, "").strip()).strip()
    return value


def tokenize_conversation(conversations: Sequence[Dict[str, str]], tokenizer, family: str, model_max_length: int,
                          pretraining: bool = False) -> Tuple[List[int], List[int]]:
    """A training sample's ids and labels, labels IGNORE_INDEX (-100) outside the assistant turns.

    `conversations` is the data's list of {"from": "human" | "gpt", "value": text}, alternating and
    starting with a human turn (a leading gpt turn is dropped). As in the original, the masked span of
    each exchange runs from the end of the previous exchange to the end of the prompt that asks for this
    answer (the template rendered with a generation prompt), lengths counted by tokenizing each prefix.
    So the answer and what the template puts after it (EOS, <|im_end|>) are learned.

    `pretraining=True` is the original's alignment phase (audio-visual branch): one exchange whose user
    turn is the modal tag alone. Both lists are cut to `model_max_length`.
    """
    _check_family(family)
    turns = list(conversations)
    if turns and turns[0].get("from") != "human":
        turns = turns[1:]
    for i, t in enumerate(turns):
        want = "human" if i % 2 == 0 else "gpt"
        if t.get("from") != want:
            raise ValueError(f"conversation turn {i}: expected from='{want}', got {t.get('from')!r}")
    if not turns or len(turns) % 2:
        raise ValueError(f"a conversation needs human/gpt pairs, got {len(turns)} turns")
    messages = [{"role": _ROLES[t["from"]], "content": _tag_first(t["value"])} for t in turns]

    if pretraining:
        if len(messages) != 2:
            raise ValueError(f"a pretraining sample is one human/gpt pair, got {len(messages)} turns")
        tags = _TAG_PATTERN.findall(messages[0]["content"])
        if not tags:
            raise ValueError("a pretraining sample needs a modal tag in its human turn")
        messages[0]["content"] = tags[0]

    def length(msgs, gen):
        return len(tokenize_multimodal(render(msgs, family, tokenizer, add_generation_prompt=gen), tokenizer))

    input_ids = tokenize_multimodal(render(messages, family, tokenizer, add_generation_prompt=False), tokenizer)
    labels = list(input_ids)
    done = 0  # tokens up to the end of the previous exchange
    for k in range(0, len(messages), 2):
        prompt_end = length(messages[:k + 1], gen=True)
        labels[done:prompt_end] = [IGNORE_INDEX] * len(labels[done:prompt_end])
        done = length(messages[:k + 2], gen=False)
    return input_ids[:model_max_length], labels[:model_max_length]
