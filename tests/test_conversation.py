"""Chat prompts, multimodal tokenization and training labels (vllama_jax/preprocess/conversation.py).

The expected prompt texts are written out from the original's facts: `mm_infer` puts the modal tag and
a newline before the question and, for Mistral / Mixtral models, the Llama-2 style system message
below first; the Mistral-Instruct chat template renders `<s> [INST] {system}\\n\\n{user} [/INST]`, an
answer as ` {answer}</s>`; Qwen2-Instruct's ChatML adds "You are a helpful assistant." when there is no
system turn. `tokenizer_multimodal_token` tokenizes the text between tags without special tokens and
puts -201 / -200 / -202 where the tags were. Training labels are -100 except the assistant turns.
"""
import pytest
from transformers import AutoTokenizer

from vllama_jax.preprocess.conversation import build_prompt, tokenize_conversation, tokenize_multimodal

SYSTEM = (
    "<<SYS>>\n"
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information.\n"
    "<</SYS>>"
)
CHATML_NO_DEFAULT_SYSTEM = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# What the Qwen2 template puts before the first user turn's text.
QWEN2_HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
CONVERSATION = [
    {"from": "human", "value": "Describe it. <video>"},
    {"from": "gpt", "value": "A dog runs."},
    {"from": "human", "value": "Colour?"},
    {"from": "gpt", "value": "Brown."},
]


@pytest.fixture(scope="module")
def tokenizer(fixtures_dir):
    """The fixture's tiny byte-level BPE tokenizer: <unk> <s> </s> = 0 1 2, no chat template."""
    tok = AutoTokenizer.from_pretrained(fixtures_dir / "v_mistral_clip_stc")
    assert not tok.chat_template
    return tok


@pytest.fixture(scope="module")
def templated_tokenizer(fixtures_dir):
    """The same tokenizer carrying its own (ChatML, no default system turn) chat template."""
    tok = AutoTokenizer.from_pretrained(fixtures_dir / "v_mistral_clip_stc")
    tok.chat_template = CHATML_NO_DEFAULT_SYSTEM
    return tok


def _encode(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def _mistral_sample_ids(tok):
    """CONVERSATION as a Mistral training sample: the tokenizer's own ids of the text either side of the
    (moved) video tag, -201 spliced in by hand."""
    return _encode(tok, "<s> [INST] ") + [-201] + \
        _encode(tok, "\nDescribe it. [/INST] A dog runs.</s> [INST] Colour? [/INST] Brown.</s>")


def _learned_spans(tok, ids, labels):
    """The decoded runs of positions whose label is not -100 (each must equal its input id)."""
    spans, run = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab == -100:
            if run:
                spans.append(tok.decode(run))
            run = []
        else:
            assert lab == i
            run.append(i)
    if run:
        spans.append(tok.decode(run))
    return spans


# ---------------------------------------------------------------------------------------------------
# Inference prompts
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["mistral", "mixtral"])
def test_mistral_prompt_is_the_originals(tokenizer, family):
    prompt = build_prompt([{"role": "user", "content": "What is happening?"}], family, tokenizer, "video")
    assert prompt == "<s> [INST] " + SYSTEM + "\n\n<video>\nWhat is happening? [/INST]"


def test_qwen2_prompt_multi_turn(tokenizer):
    messages = [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "A man."},
                {"role": "user", "content": "And then?"}]
    prompt = build_prompt(messages, "qwen2", tokenizer, "image")
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\n<image>\nWhat?<|im_end|>\n"
                      "<|im_start|>assistant\nA man.<|im_end|>\n"
                      "<|im_start|>user\nAnd then?<|im_end|>\n"
                      "<|im_start|>assistant\n")


def test_mistral_multi_turn_history(tokenizer):
    messages = [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "A man."},
                {"role": "user", "content": "And then?"}]
    prompt = build_prompt(messages, "mistral", tokenizer, "audio")
    assert prompt == ("<s> [INST] " + SYSTEM + "\n\n<audio>\nWhat? [/INST] A man.</s> [INST] And then? [/INST]")


def test_tokenizer_chat_template_is_used(templated_tokenizer):
    prompt = build_prompt([{"role": "user", "content": "Why?"}], "mistral", templated_tokenizer, "av")
    assert prompt == ("<|im_start|>system\n" + SYSTEM + "<|im_end|>\n"
                      "<|im_start|>user\n<video>\nWhy?<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_tag_system_and_text_mode(tokenizer):
    # A question that already carries its tag gets no second one.
    prompt = build_prompt([{"role": "user", "content": "<video>\nWhy?"}], "qwen2", tokenizer, "video")
    assert prompt.count("<video>") == 1
    # Text only: the original still puts the (empty) tag's newline before the question.
    assert build_prompt([{"role": "user", "content": "Hi"}], "qwen2", tokenizer, None).endswith(
        "<|im_start|>user\n\nHi<|im_end|>\n<|im_start|>assistant\n")
    # A custom system message replaces the default one; "" drops it.
    assert build_prompt([{"role": "user", "content": "Hi"}], "mistral", tokenizer, "video", system="Be brief.") == \
        "<s> [INST] Be brief.\n\n<video>\nHi [/INST]"
    assert build_prompt([{"role": "user", "content": "Hi"}], "mistral", tokenizer, "video", system="") == \
        "<s> [INST] <video>\nHi [/INST]"


# ---------------------------------------------------------------------------------------------------
# Multimodal tokenization
# ---------------------------------------------------------------------------------------------------

def test_placeholders_land_where_the_tags_were(tokenizer):
    text = "<s> [INST] <video>\nWhat is it? [/INST]"
    ids = tokenize_multimodal(text, tokenizer)
    assert ids == [tokenizer.bos_token_id] + _encode(tokenizer, " [INST] ") + [-201] + \
        _encode(tokenizer, "\nWhat is it? [/INST]")
    # No BOS is added between the pieces: the only one is the template's.
    assert ids.count(tokenizer.bos_token_id) == 1
    ids = tokenize_multimodal("a<image>b<audio><video>c", tokenizer)
    assert ids == _encode(tokenizer, "a") + [-200] + _encode(tokenizer, "b") + [-202, -201] + _encode(tokenizer, "c")
    assert tokenize_multimodal("no tags here", tokenizer) == _encode(tokenizer, "no tags here")


# ---------------------------------------------------------------------------------------------------
# Training samples
# ---------------------------------------------------------------------------------------------------

def test_labels_mistral(tokenizer):
    ids, labels = tokenize_conversation(CONVERSATION, tokenizer, "mistral", 1024)
    assert len(ids) == len(labels)
    # The tag moves to the head of its turn; training prompts carry no system message.
    assert ids == _mistral_sample_ids(tokenizer)
    assert ids.count(-201) == 1 and labels[ids.index(-201)] == -100
    assert _learned_spans(tokenizer, ids, labels) == [" A dog runs.</s>", " Brown.</s>"]


def test_labels_qwen2(tokenizer):
    ids, labels = tokenize_conversation(CONVERSATION, tokenizer, "qwen2", 1024)
    # The tokenizer's own ids of the text either side of the tag, -201 spliced in by hand.
    assert ids == _encode(tokenizer, QWEN2_HEAD) + \
        [-201] + _encode(tokenizer, "\nDescribe it.<|im_end|>\n<|im_start|>assistant\nA dog runs.<|im_end|>\n"
                                    "<|im_start|>user\nColour?<|im_end|>\n<|im_start|>assistant\nBrown.<|im_end|>\n")
    assert _learned_spans(tokenizer, ids, labels) == ["A dog runs.<|im_end|>\n", "Brown.<|im_end|>\n"]


def test_labels_with_tokenizer_template(templated_tokenizer):
    ids, labels = tokenize_conversation(CONVERSATION, templated_tokenizer, "mistral", 1024)
    assert ids[:len(_encode(templated_tokenizer, "<|im_start|>user\n"))] == \
        _encode(templated_tokenizer, "<|im_start|>user\n")
    assert _learned_spans(templated_tokenizer, ids, labels) == ["A dog runs.<|im_end|>\n", "Brown.<|im_end|>\n"]


def test_leading_gpt_turn_is_dropped_and_truncation(tokenizer):
    full_ids, full_labels = tokenize_conversation(CONVERSATION, tokenizer, "mistral", 1024)
    ids, labels = tokenize_conversation([{"from": "gpt", "value": "Hello."}] + CONVERSATION, tokenizer, "mistral", 1024)
    assert (ids, labels) == (full_ids, full_labels)
    expected = _mistral_sample_ids(tokenizer)
    assert len(expected) > 20
    ids, labels = tokenize_conversation(CONVERSATION, tokenizer, "mistral", 20)
    assert (ids, labels) == (expected[:20], full_labels[:20])


def test_pretraining_sample(tokenizer):
    # The alignment phase: the user turn is the tag alone, the caption is learned.
    ids, labels = tokenize_conversation(CONVERSATION[:2], tokenizer, "qwen2", 1024, pretraining=True)
    assert ids == _encode(tokenizer, QWEN2_HEAD) + \
        [-201] + _encode(tokenizer, "<|im_end|>\n<|im_start|>assistant\nA dog runs.<|im_end|>\n")
    assert _learned_spans(tokenizer, ids, labels) == ["A dog runs.<|im_end|>\n"]


def test_bad_input(tokenizer):
    with pytest.raises(ValueError, match="llama"):
        build_prompt([{"role": "user", "content": "Hi"}], "llama", tokenizer, "video")
    with pytest.raises(ValueError, match="modal"):
        build_prompt([{"role": "user", "content": "Hi"}], "qwen2", tokenizer, "smell")
    with pytest.raises(ValueError, match="pairs"):
        tokenize_conversation(CONVERSATION[:3], tokenizer, "qwen2", 1024)
    with pytest.raises(ValueError, match="turn 1"):
        tokenize_conversation([CONVERSATION[0], CONVERSATION[0]], tokenizer, "qwen2", 1024)
