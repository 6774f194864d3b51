"""A tiny word-level tokenizer for the demo: one id per word of its dataset, ChatML special tokens.

    tok = word_tokenizer(texts)          # a transformers PreTrainedTokenizerFast
    tok.save_pretrained(folder)          # what data.tokenizer and the release checkpoint hold

Ids: 0 `<|endoftext|>` (padding and unknown words), 1 `<|im_start|>`, 2 `<|im_end|>` (the end of a turn,
the decoder's EOS, as in Qwen2), then every word and punctuation mark of `texts` and of the ChatML
template's default system turn, sorted (so the same texts always give the same ids). Words are split
on whitespace and punctuation; decoding joins them with spaces. An answer such as "red" or "B" is one
token, so the model learns each answer as a single prediction followed by `<|im_end|>`.
"""
from __future__ import annotations

import re
from typing import Iterable

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# What the ChatML template adds around the turns (conversation.py's CHATML_TEMPLATE).
TEMPLATE_TEXT = "system You are a helpful assistant. user assistant"
_WORD = re.compile(r"\w+|[^\w\s]")  # what the Whitespace pre-tokenizer below splits text into


def words_of(texts: Iterable[str]) -> list:
    words = set()
    for t in list(texts) + [TEMPLATE_TEXT]:
        words.update(_WORD.findall(t))
    return sorted(words - set(SPECIAL))


def word_tokenizer(texts: Iterable[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for w in words_of(texts):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+|[^\w\s]+, as _WORD (runs of punctuation aside)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=SPECIAL[0], pad_token=SPECIAL[0],
                                   eos_token=SPECIAL[2], additional_special_tokens=list(SPECIAL[1:]))
