"""Chat and batch answers on real files end to end: mp4s made here with PyAV (a moving square, with and
without a tone), through pre-processing, the tiny fixture checkpoints, generation and detokenization;
the CLI `chat` and `answer` commands; clear errors for a corrupt file. Each answer is checked as text: the
decode of the greedy tokens that the full forward (held against the original's outputs) picks."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import vllama_jax
from data_pipelines.synthetic import write_video
from vllama_jax.answering import answer_rows

from conftest import FIXTURES


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    with_audio, silent, corrupt = d / "tone.mp4", d / "silent.mp4", d / "corrupt.mp4"
    write_video(str(with_audio), "red", seconds=2.0, sound=True)
    write_video(str(silent), "blue", seconds=2.0, sound=False)
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return {"tone": str(with_audio), "silent": str(silent), "corrupt": str(corrupt)}


def _greedy_answer(model, question, n, modal, **files):
    """The answer greedy decoding must give: the tokens that the full forward (held against the original's
    outputs in test_videollama2.py) picks position by position after the original's prompt, decoded up to
    EOS. `modal` is the prompt's tag ("video" for a video with its sound track too)."""
    from vllama_jax.inference import media_batch, until_eos
    from vllama_jax.preprocess.conversation import build_prompt, tokenize_multimodal

    tok, eos = model.tokenizer, model.config.decoder.eos_ids
    media = model.load_media(**files) or None
    prompt = build_prompt([{"role": "user", "content": question}], model.config.decoder.family, tok, modal)
    ids = np.asarray(tokenize_multimodal(prompt, tok), np.int64)
    out = model.generate(ids[None], media=[media], max_new_tokens=n)[0]  # the same call as chat's
    new = until_eos(out, eos)
    picked = out[:len(new) + 1]  # with the EOS that stopped it, if any
    full = np.concatenate([ids, picked[:-1]])
    size = -(-len(full) // model.length_bucket) * model.length_bucket  # right-padded: one program per bucket
    fwd = model.forward({"input_ids": np.pad(full, (0, size - len(full)))[None],
                         "attention_mask": (np.arange(size) < len(full))[None], **media_batch([media], model.config)})
    real = fwd["logits"][0][np.asarray(fwd["attention_mask"][0], bool)]  # the real positions only
    np.testing.assert_array_equal(real[-len(picked):].argmax(-1), picked)
    return tok.decode(new, skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def av_model():
    # 30 s of audio is 1496 BEATs tokens: past this tiny config's 1024 positions, so opt in to more.
    return vllama_jax.load(str(FIXTURES / "av_qwen2_clip_stc"), max_context=2048)


@pytest.fixture(scope="module")
def video_model():
    return vllama_jax.load(str(FIXTURES / "v_mistral_clip_stc"))


def test_chat_about_a_video_with_its_sound_track(av_model, media):
    pieces = []
    answer = av_model.chat("What do you see and hear?", video=media["tone"], audio=True, max_new_tokens=6,
                           stream=pieces.append)
    assert answer == _greedy_answer(av_model, "What do you see and hear?", 6, "video", video=media["tone"], audio=True)
    assert "".join(pieces).strip() == answer  # the streamed text is the answer


def test_chat_about_a_video_without_sound_track_gets_silence(av_model, media, caplog):
    loaded = av_model.load_media(video=media["silent"], audio=True)
    assert loaded["video"].shape == (av_model.config.num_frames, 3, 56, 56)
    assert loaded["audio"].shape == (2998, 128)
    assert av_model.chat("What is there?", video=media["silent"], audio=True, max_new_tokens=4) == \
        _greedy_answer(av_model, "What is there?", 4, "video", video=media["silent"], audio=True)


def test_multi_turn_chat_keeps_history(video_model, media):
    chat = video_model.new_chat(video=media["silent"])
    chat.ask("What moves?", max_new_tokens=3)
    chat.ask("Where to?", max_new_tokens=3)
    roles = [m["role"] for m in chat.messages]
    assert roles == ["user", "assistant", "user", "assistant"]


def test_corrupt_video_is_a_clear_error(video_model, media):
    with pytest.raises(Exception, match="corrupt.mp4"):
        video_model.chat("What happens?", video=media["corrupt"], max_new_tokens=2)


def test_answer_batches_resumes_and_reports_bad_rows(video_model, media, tmp_path):
    questions = tmp_path / "q.jsonl"
    out = tmp_path / "a.jsonl"
    rows = [{"id": 1, "question": "What moves?", "video": media["silent"]},
            {"id": 2, "question": "What colour is it?", "video": media["tone"]},
            {"id": 3, "question": "And this?", "video": media["corrupt"]},
            {"id": 4, "question": "Say hi."},
            {"id": 5, "question": "Why? " * 1100}]  # longer than the context: batched with 4
    questions.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "vllama_jax", "answer", "--model", str(FIXTURES / "v_mistral_clip_stc"),
           "--input", str(questions), "--out", str(out), "--max-new-tokens", "3", "--batch-size", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert set(got) == {1, 2, 3, 4, 5}
    assert "error" in got[3] and "corrupt.mp4" in got[3]["error"]
    assert got[5]["error"].startswith("ContextLengthError")
    for i, files, modal in ((1, {"video": media["silent"]}, "video"), (2, {"video": media["tone"]}, "video"),
                            (4, {}, None)):
        assert got[i]["answer"] == _greedy_answer(video_model, rows[i - 1]["question"], 3, modal, **files)
    # A second run finds every id answered and does nothing.
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and len(out.read_text().splitlines()) == 5


def test_batched_answers_equal_one_by_one(video_model, media):
    rows = [{"id": 1, "question": "What moves?", "video": media["silent"]},
            {"id": 2, "question": "What colour is the moving square?", "video": media["tone"]}]
    together, alone = [], []
    answer_rows(video_model, rows, batch_size=2, max_new_tokens=4, on_result=together.append)
    for row in rows:
        answer_rows(video_model, [row], batch_size=1, max_new_tokens=4, on_result=alone.append)
    key = lambda r: r["id"]
    assert [r["answer"] for r in sorted(together, key=key)] == [r["answer"] for r in sorted(alone, key=key)]


def test_a_file_asked_about_again_is_decoded_once(video_model, av_model, media):
    """With a media cache each file is decoded once however its questions interleave with others' (the rows
    are taken in chunks of the files the cache holds: here one), and the answers are the uncached ones."""
    from vllama_jax.answering import media_bytes
    from vllama_jax.preprocess.media_cache import MediaCache

    rows = [{"id": i, "question": q, "video": media[f]} for i, (q, f) in enumerate(
        [("What moves?", "tone"), ("What moves?", "silent"), ("What colour is it?", "tone"),
         ("What colour is it?", "silent"), ("Is it big?", "tone"), ("And this?", "corrupt")])]
    plain, cached = [], []
    answer_rows(video_model, rows, batch_size=2, max_new_tokens=3, on_result=plain.append)
    cache = MediaCache(media_bytes(video_model))  # room for one file's frames
    answer_rows(video_model, rows, batch_size=2, max_new_tokens=3, on_result=cached.append, media_cache=cache)
    key = lambda r: r["id"]
    assert sorted(cached, key=key) == sorted(plain, key=key)
    assert "corrupt.mp4" in sorted(cached, key=key)[-1]["error"]
    assert cache.stats()["misses"] == 3 and cache.stats()["hits"] == 3  # tone, silent, corrupt (not kept)

    # Audio-visual rows: the frames and the sound track are kept apart, each read once.
    av_rows = [{"id": i, "question": q, "video": media["tone"], "av": True} for i, q in enumerate(["Hi?", "Why?"])]
    plain, cached = [], []
    answer_rows(av_model, av_rows, batch_size=1, max_new_tokens=2, on_result=plain.append)
    cache = MediaCache(1 << 28)
    answer_rows(av_model, av_rows, batch_size=1, max_new_tokens=2, on_result=cached.append, media_cache=cache)
    assert sorted(cached, key=key) == sorted(plain, key=key)
    assert cache.stats()["misses"] == 2 and cache.stats()["hits"] == 2


def test_chat_command_streams(media):
    r = subprocess.run([sys.executable, "-m", "vllama_jax", "chat", "--model", str(FIXTURES / "v_mistral_clip_stc"),
                        "--video", media["silent"], "--max-new-tokens", "3", "What happens?"],
                       capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


def test_chat_about_an_image_and_about_a_sound_file(av_model, tmp_path):
    from data_pipelines.synthetic import write_image, write_wav
    img, wav = tmp_path / "sq.jpg", tmp_path / "tone.wav"
    write_image(str(img), "green")
    write_wav(str(wav), "green")
    assert av_model.chat("What colour?", image=str(img), max_new_tokens=3) == \
        _greedy_answer(av_model, "What colour?", 3, "image", image=str(img))
    assert av_model.chat("Which tone?", audio=str(wav), max_new_tokens=3) == \
        _greedy_answer(av_model, "Which tone?", 3, "audio", audio=str(wav))


def test_video_only_model_refuses_audio_clearly(video_model, media):
    with pytest.raises(ValueError, match="no audio tower"):
        video_model.chat("What do you hear?", video=media["tone"], audio=True, max_new_tokens=2)


def test_num_frames_at_inference_differs_from_training(media, caplog):
    from vllama_jax.models.sequence import video_tokens
    with caplog.at_level("WARNING"):
        model = vllama_jax.load(str(FIXTURES / "v_mistral_clip_stc"), num_frames=8)
    assert "differs from the 4" in caplog.text
    assert model.config.num_frames == 8 and model.processor.num_frames == 8
    # 8 frames of 4x4 patches through the STC connector: t' = 5, h' = w' = 3.
    assert video_tokens(model.config) == 5 * 3 * 3
    assert model.chat("What moves?", video=media["silent"], max_new_tokens=2) == \
        _greedy_answer(model, "What moves?", 2, "video", video=media["silent"])


@pytest.fixture(scope="module")
def siglip_model():
    return vllama_jax.load(str(FIXTURES / "v_qwen2_siglip_v35"))


@pytest.mark.parametrize("kind,name", [("video", "sample_demo_3.mp4"), ("image", "extreme_ironing.jpg")])
def test_siglip_chat_on_real_media_agrees_with_the_fixture_checked_forward(siglip_model, kind, name):
    """VideoLLaMA2.1's layout (SigLIP, stc_connector_v35) through the whole chat path on the original's own
    media: the answer is the decode of greedy tokens that the full forward (held against the original's
    outputs in test_videollama2.py) also picks, position by position."""
    from conftest import MEDIA

    path = str(MEDIA / name)
    assert siglip_model.load_media(**{kind: path})[kind].shape[-3:] == (3, 56, 56)
    answer = siglip_model.chat("What is in it?", **{kind: path}, max_new_tokens=6)
    assert answer == _greedy_answer(siglip_model, "What is in it?", 6, kind, **{kind: path})
