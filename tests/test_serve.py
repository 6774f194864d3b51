"""`vllama-jax serve` over real HTTP on 127.0.0.1 (uvicorn on a thread, the official `openai` client):
answers equal `model.chat`'s (greedy and seeded sampling, video / image / audio-visual / sound file,
multi-turn), streaming joins to the same text, `usage` counts, 8 concurrent clients, a short request
overtaking long ones, a disconnect freeing its slot, and every bad input a 4xx naming its field."""
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")

import vllama_jax
from vllama_jax.inference import until_eos
from vllama_jax.models.sequence import audio_tokens, video_tokens
from vllama_jax.preprocess.conversation import build_prompt, tokenize_multimodal
from vllama_jax.serve.app import Server, default_workers, start_in_thread

from conftest import FIXTURES, MEDIA

VIDEO, AV_VIDEO = "output_v_3V9tzjyr51I.mp4", "sample_demo_3.mp4"
IMAGE, WAV = "extreme_ironing.jpg", "door.of.bar.raining2.wav"
KEY = "test-key"


def data_url(path, mime):
    return f"data:{mime};base64," + base64.b64encode(open(path, "rb").read()).decode()


def video_part(url):
    return {"type": "video_url", "video_url": {"url": url}}


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def user(text, *parts):
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A media root with the test media, a corrupt video, and a symlink pointing out of it."""
    d = tmp_path_factory.mktemp("media_root")
    for name in (VIDEO, AV_VIDEO, IMAGE, WAV):
        shutil.copy(MEDIA / name, d / name)
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    outside = tmp_path_factory.mktemp("outside") / "secret.mp4"
    shutil.copy(MEDIA / VIDEO, outside)
    os.symlink(outside, d / "link.mp4")
    return d


@pytest.fixture(scope="module")
def vmodel():
    return vllama_jax.load(str(FIXTURES / "v_mistral_clip_stc"))


@pytest.fixture(scope="module")
def vserver(vmodel, root):
    st = start_in_thread(Server(vmodel, max_batch=4, max_len=1024, media_root=str(root), max_body=4 * 2 ** 20))
    yield st
    st.stop()
    st.server.close()


@pytest.fixture(scope="module")
def vclient(vserver):
    return openai.OpenAI(base_url=vserver.url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def avmodel():
    # 30 s of audio is ~1500 BEATs tokens, past this tiny config's 1024 positions: opt in to more.
    return vllama_jax.load(str(FIXTURES / "av_qwen2_clip_stc"), max_context=2048)


@pytest.fixture(scope="module")
def avserver(avmodel):
    st = start_in_thread(Server(avmodel, max_batch=4, max_len=2048, api_key=KEY))  # no media root
    yield st
    st.stop()
    st.server.close()


@pytest.fixture(scope="module")
def avclient(avserver):
    return openai.OpenAI(base_url=avserver.url, api_key=KEY, max_retries=0, timeout=300)


def reference(model, question, max_new_tokens, system=None, history=(), **media):
    """model.chat's answer, and the usage counts the server must report (prompt incl. media, tokens sampled)."""
    session = model.new_chat(system=system, **media)
    for q in history:
        session.ask(q, max_new_tokens=max_new_tokens)
    answer = session.ask(question, max_new_tokens=max_new_tokens)
    msgs = session.messages[:-1]
    prompt = build_prompt(msgs, model.config.decoder.family, model.tokenizer, session.modal, system=system)
    ids = np.asarray(tokenize_multimodal(prompt, model.tokenizer))[None]
    n = ids.shape[1] - (1 if session.media else 0)
    if "video" in session.media or "image" in session.media:
        n += video_tokens(model.config)
    if "audio" in session.media:
        n += audio_tokens(model.config, session.media["audio"].shape[0])
    out = model.generate(ids, media=[session.media or None], max_new_tokens=max_new_tokens)[0]
    kept = until_eos(out, model.config.decoder.eos_ids)
    completion = len(kept) + (1 if len(kept) < max_new_tokens else 0)  # the EOS that ended it counts
    return answer, n, completion, "stop" if len(kept) < max_new_tokens else "length"


def test_video_and_image_answer_as_model_chat(vmodel, vclient, root):
    ref, n, completion, finish = reference(vmodel, "What happens?", 24, video=str(root / VIDEO))
    r = vclient.chat.completions.create(model="v_mistral_clip_stc", max_tokens=24, temperature=0,
                                        messages=[user("What happens?", video_part(f"file://{root / VIDEO}"))])
    assert r.choices[0].message.content == ref
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n, completion)
    assert r.usage.total_tokens == n + completion
    assert r.choices[0].finish_reason == finish

    # Streamed: the pieces join to the same text; usage in the last chunk.
    pieces, usage = [], None
    for ch in vclient.chat.completions.create(model="v_mistral_clip_stc", max_tokens=24, stream=True,
                                              stream_options={"include_usage": True},
                                              messages=[user("What happens?", video_part(f"file://{root / VIDEO}"))]):
        if ch.choices and ch.choices[0].delta.content:
            pieces.append(ch.choices[0].delta.content)
        usage = ch.usage or usage
    assert "".join(pieces) == ref and (usage.prompt_tokens, usage.completion_tokens) == (n, completion)

    # An image as a data: URL.
    ref, n, completion, _ = reference(vmodel, "What is unusual here?", 24, image=str(root / IMAGE))
    r = vclient.chat.completions.create(
        model="v_mistral_clip_stc", max_tokens=24,
        messages=[user("What is unusual here?", image_part(data_url(root / IMAGE, "image/jpeg")))])
    assert r.choices[0].message.content == ref
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n, completion)


def test_engine_in_split_layout_answers_as_model_chat(vmodel, root):
    """The accelerators' decode layout (per-layer weights and caches, models/decoder.py) in the engine: two
    concurrent requests answer as the stacked model's chat does."""
    from vllama_jax.inference import VideoLLaMA2Model
    m = vmodel
    split = VideoLLaMA2Model(m.config, m.params, m.tokenizer, m.processor, path=m.path, decode_layout="split")
    st = start_in_thread(Server(split, max_batch=2, max_len=1024, media_root=str(root)))
    try:
        client = openai.OpenAI(base_url=st.url, api_key="unused", max_retries=0, timeout=300)
        jobs = [("What happens?", video_part(f"file://{root / VIDEO}"), {"video": str(root / VIDEO)}),
                ("What is unusual here?", image_part(f"file://{root / IMAGE}"), {"image": str(root / IMAGE)})]
        got = {}

        def ask(q, part):
            got[q] = client.chat.completions.create(model="v_mistral_clip_stc", max_tokens=16,
                                                    messages=[user(q, part)]).choices[0].message.content

        threads = [threading.Thread(target=ask, args=(q, part)) for q, part, _ in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        for q, _, media in jobs:
            assert got[q] == reference(m, q, 16, **media)[0]
    finally:
        st.stop()
        st.server.close()


def test_media_cache_lru_bytes_and_read_only():
    from vllama_jax.preprocess.media_cache import MediaCache

    cache, loads = MediaCache(max_bytes=3 * 400), []

    def loader(i):
        return lambda: loads.append(i) or np.full((100,), i, np.float32)  # 400 bytes

    for i in (0, 1, 2, 0, 3):  # 0 is used again before 3 arrives: 1 is the least recently used
        cache.get_or_load(i, loader(i))
    assert loads == [0, 1, 2, 3]
    assert cache.stats() == {"entries": 3, "bytes": 1200, "max_bytes": 1200, "hits": 1, "misses": 4}
    cache.get_or_load(1, loader(1))  # evicted: loaded again, and 2 (now the least recently used) dropped
    got = cache.get_or_load(3, loader(3))  # still there
    assert loads == [0, 1, 2, 3, 1]
    cache.get_or_load(2, loader(2))
    assert loads == [0, 1, 2, 3, 1, 2]
    with pytest.raises(ValueError):
        got[0] = 5.0  # read-only: a request cannot change what the next one reads
    big = cache.get_or_load("big", lambda: np.zeros((1000,), np.float32))  # larger than the whole cache
    assert big.shape == (1000,) and cache.stats()["bytes"] <= 1200 and "big" not in cache._entries


def test_a_media_cache_lookup_that_keeps_nothing():
    from vllama_jax.preprocess.media_cache import MediaCache

    cache = MediaCache(1 << 20)
    kept = cache.get_or_load("a", lambda: np.ones(4))
    assert cache.get_or_load("b", lambda: np.zeros(4), keep=False).sum() == 0
    assert cache.get_or_load("a", lambda: np.zeros(4), keep=False) is kept  # found: returned, not reloaded
    assert cache.stats()["entries"] == 1 and (cache.stats()["hits"], cache.stats()["misses"]) == (1, 2)


def test_media_cache_serves_a_file_again_until_it_changes(vmodel, tmp_path):
    """With --media-cache-mb, a file or data: payload asked about again is not decoded again; a file
    rewritten in place is; every answer stays model.chat's."""
    shutil.copy(MEDIA / VIDEO, tmp_path / "clip.mp4")
    shutil.copy(MEDIA / IMAGE, tmp_path / IMAGE)
    st = start_in_thread(Server(vmodel, max_batch=2, max_len=1024, media_root=str(tmp_path), media_cache_mb=64))
    try:
        client = openai.OpenAI(base_url=st.url, api_key="unused", max_retries=0, timeout=300)
        health = lambda: httpx.get(st.url.rsplit("/v1", 1)[0] + "/health").json()["media_cache"]

        def ask(q, part):
            return client.chat.completions.create(model="v_mistral_clip_stc", max_tokens=16,
                                                  messages=[user(q, part)]).choices[0].message.content

        video = video_part(f"file://{tmp_path / 'clip.mp4'}")
        ref = reference(vmodel, "What happens?", 16, video=str(tmp_path / "clip.mp4"))[0]
        assert ask("What happens?", video) == ref
        assert ask("What happens?", video) == ref
        assert (health()["misses"], health()["hits"]) == (1, 1)
        # Media workers: one per core by default (at most 8), each decoding on one FFmpeg thread; the
        # answers above are model.chat's, whose decoding FFmpeg threads as it likes.
        assert httpx.get(st.url.rsplit("/v1", 1)[0] + "/health").json()["media_workers"] == default_workers()
        image = image_part(data_url(tmp_path / IMAGE, "image/jpeg"))
        ref_image = reference(vmodel, "What is unusual here?", 16, image=str(tmp_path / IMAGE))[0]
        assert ask("What is unusual here?", image) == ask("What is unusual here?", image) == ref_image
        assert (health()["misses"], health()["hits"]) == (2, 2)

        shutil.copy(MEDIA / AV_VIDEO, tmp_path / "clip.mp4")  # another video under the same name
        ref_new = reference(vmodel, "What happens?", 16, video=str(tmp_path / "clip.mp4"))[0]
        assert ask("What happens?", video) == ref_new
        assert (health()["misses"], health()["hits"]) == (3, 2)
        assert health()["entries"] == 3 and 0 < health()["bytes"] <= 64 * 2 ** 20
    finally:
        st.stop()
        st.server.close()


def test_several_images_are_the_frames_of_a_video(vmodel, vclient, tmp_path):
    """What lmms-eval's OpenAI-compatible models send for a video: its frames as image_url parts."""
    from PIL import Image
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        img = Image.new("RGB", (64, 48), (40 * i, 200 - 30 * i, 90))
        img.paste((255, 255, 255), (5 * i, 10, 5 * i + 12, 22))
        img.save(frames / f"{i:03d}.png")
    ref, n, completion, _ = reference(vmodel, "What moves?", 24, video=str(frames))
    parts = [image_part(data_url(frames / f"{i:03d}.png", "image/png")) for i in range(6)]
    r = vclient.chat.completions.create(model="v_mistral_clip_stc", max_tokens=24,
                                        messages=[user("What moves?", *parts)])
    assert r.choices[0].message.content == ref
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n, completion)


@pytest.mark.slow
def test_multi_turn_seeded_sampling_and_stop(vmodel, vclient, root):
    system = "You answer in one word."
    first, _, _, _ = reference(vmodel, "What moves?", 24, system=system, video=str(root / VIDEO))
    ref, n, _, _ = reference(vmodel, "Where to?", 24, system=system, history=["What moves?"], video=str(root / VIDEO))
    msgs = [{"role": "system", "content": system}, user("What moves?", video_part(f"file://{root / VIDEO}")),
            {"role": "assistant", "content": first}, {"role": "user", "content": "Where to?"}]
    r = vclient.chat.completions.create(model="v_mistral_clip_stc", max_tokens=24, messages=msgs)
    assert r.choices[0].message.content == ref and r.usage.prompt_tokens == n

    sampling = dict(temperature=0.8, top_p=0.9, top_k=20, seed=7)
    ref = vmodel.chat("Describe it.", video=str(root / VIDEO), max_new_tokens=24, **sampling)
    extra = {"top_k": sampling.pop("top_k")}
    r = vclient.chat.completions.create(model="v_mistral_clip_stc", max_tokens=24, extra_body=extra, **sampling,
                                        messages=[user("Describe it.", video_part(f"file://{root / VIDEO}"))])
    assert r.choices[0].message.content == ref

    greedy = vmodel.chat("What happens?", video=str(root / VIDEO), max_new_tokens=24)
    stop = next(greedy[i:i + 2] for i in range(3, len(greedy) - 2) if "\ufffd" not in greedy[i:i + 2]
                and not greedy[i:i + 2].isspace())
    r = vclient.chat.completions.create(model="v_mistral_clip_stc", max_tokens=24, stop=[stop],
                                        messages=[user("What happens?", video_part(f"file://{root / VIDEO}"))])
    assert r.choices[0].message.content == greedy[:greedy.find(stop)].strip()
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_audio_visual_and_sound_file_answer_as_model_chat(avmodel, avclient, root):
    video_url = data_url(root / AV_VIDEO, "video/mp4")
    ref, n, completion, _ = reference(avmodel, "What do you see and hear?", 8, video=str(root / AV_VIDEO), audio=True)
    r = avclient.chat.completions.create(model="av_qwen2_clip_stc", max_tokens=8,
                                         extra_body={"mm_processor_kwargs": {"use_audio_in_video": True}},
                                         messages=[user("What do you see and hear?", video_part(video_url))])
    assert r.choices[0].message.content == ref
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n, completion) and n > 1024

    # OpenAI's input_audio part (base64 wav), streamed.
    ref, n, completion, _ = reference(avmodel, "What do you hear?", 8, audio=str(root / WAV))
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(open(root / WAV, "rb").read()).decode(),
                                                    "format": "wav"}}
    pieces = []
    for ch in avclient.chat.completions.create(model="av_qwen2_clip_stc", max_tokens=8, stream=True,
                                               messages=[user("What do you hear?", audio)]):
        if ch.choices and ch.choices[0].delta.content:
            pieces.append(ch.choices[0].delta.content)
    assert "".join(pieces) == ref


def test_media_cache_keeps_a_videos_frames_and_sound_apart(avmodel, root):
    """An audio-visual request about a cached video: its frames and its sound track are two entries, and
    the second request, served from both, answers as model.chat does."""
    st = start_in_thread(Server(avmodel, max_batch=2, max_len=2048, media_cache_mb=64))
    try:
        client = openai.OpenAI(base_url=st.url, api_key="unused", max_retries=0, timeout=300)
        ref = reference(avmodel, "What do you see and hear?", 8, video=str(root / AV_VIDEO), audio=True)[0]
        part = video_part(data_url(root / AV_VIDEO, "video/mp4"))
        for _ in range(2):
            r = client.chat.completions.create(model="av_qwen2_clip_stc", max_tokens=8,
                                               extra_body={"mm_processor_kwargs": {"use_audio_in_video": True}},
                                               messages=[user("What do you see and hear?", part)])
            assert r.choices[0].message.content == ref
        cache = httpx.get(st.url.rsplit("/v1", 1)[0] + "/health").json()["media_cache"]
        assert (cache["entries"], cache["misses"], cache["hits"]) == (2, 2, 2)
    finally:
        st.stop()
        st.server.close()


def test_eight_concurrent_clients_all_answered_correctly(vmodel, vclient, root):
    questions = ["What happens?", "Who is there?", "Describe it.", "Why so?", "What colour?", "How many?",
                 "Where is it?", "What next?"]
    media = [("video", VIDEO), ("image", IMAGE), ("video", AV_VIDEO)]
    # One max_tokens for all: each distinct value is another compiled model.chat for the references.
    jobs = [(q, media[(i + k) % 3], 24) for i, q in enumerate(questions) for k in range(3)]
    refs = {j: vmodel.chat(j[0], **{j[1][0]: str(root / j[1][1])}, max_new_tokens=j[2]) for j in jobs}
    got, errors = {}, []

    def client(my_jobs):
        try:
            for q, (kind, name), mt in my_jobs:
                part = (video_part if kind == "video" else image_part)(f"file://{root / name}")
                r = vclient.chat.completions.create(model="v_mistral_clip_stc", max_tokens=mt,
                                                    messages=[user(q, part)])
                got[(q, (kind, name), mt)] = r.choices[0].message.content
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(jobs[3 * i:3 * i + 3],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert len(got) == len(jobs) == 24
    assert got == refs


def _stream_lines(client: httpx.Client, url, body, on_first=None):
    with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and on_first is not None:
                on_first()
                on_first = None
            if line == "data: [DONE]":
                return


def test_short_request_overtakes_long_ones_and_disconnect_frees_slot(vserver, root):
    """Long streams run; a short request sent while they decode finishes first (it did not wait for them)."""
    url = vserver.url + "/chat/completions"
    msgs = [user("Tell a long story.", image_part(f"file://{root / IMAGE}"))]
    with httpx.Client(timeout=300) as c:  # the fixture's greedy answer here runs long (no early EOS)
        long_tokens = c.post(url, json={"messages": msgs, "max_tokens": 500}).json()["usage"]["completion_tokens"]
    assert long_tokens > 100, "the fixture ends this answer early; pick another prompt"
    finished, started = [], threading.Semaphore(0)
    long_body = {"messages": msgs, "max_tokens": 500, "stream": True}

    def long_client(i):
        with httpx.Client(timeout=300) as c:
            _stream_lines(c, url, long_body, on_first=started.release)
        finished.append(f"long{i}")

    threads = [threading.Thread(target=long_client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for _ in threads:
        assert started.acquire(timeout=300)
    r = httpx.post(url, json={"messages": msgs, "max_tokens": 3}, timeout=300)
    assert r.status_code == 200
    finished.append("short")
    for t in threads:
        t.join(timeout=300)
    assert finished[0] == "short", finished

    # A client that goes away mid-answer (streamed, or waiting for the whole answer) frees its slot: the
    # engine counts the request as cancelled, not finished. The next request is answered.
    health_url = vserver.url.rsplit("/v1", 1)[0] + "/health"
    cancelled = httpx.get(health_url).json()["cancelled"]
    with httpx.Client(timeout=300) as c:
        with c.stream("POST", url, json=long_body) as r:  # leaves after the first generated text
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break

    def wait_idle(cancelled_now):
        """Until every slot is free and the engine has counted `cancelled_now` cancellations (the client's
        close can reach the server before its request reached the engine: wait for the count, not just idle)."""
        deadline = time.time() + 60
        while time.time() < deadline:
            health = httpx.get(health_url).json()
            if health["running"] == 0 and health["waiting"] == 0 and health["cancelled"] >= cancelled_now:
                return health
            time.sleep(0.05)
        raise AssertionError(f"slots still busy or the request not counted as cancelled: {health}")

    assert wait_idle(cancelled + 1)["cancelled"] == cancelled + 1
    body = json.dumps({"messages": msgs, "max_tokens": 500}).encode()
    sock = socket.create_connection((vserver.host, vserver.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    deadline = time.time() + 60
    while httpx.get(health_url).json()["running"] == 0 and time.time() < deadline:
        time.sleep(0.01)
    sock.close()  # the client waiting for a whole answer goes away while it decodes
    assert wait_idle(cancelled + 2)["cancelled"] == cancelled + 2
    r = httpx.post(url, json={"messages": msgs, "max_tokens": 3}, timeout=300)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


BAD = [
    # (body or raw bytes, status, param)
    (b"{not json", 400, None),
    ([1, 2], 400, None),
    ({}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "pdf_url"}]}]}, 400, "messages[0].content[0].type"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages[0].role"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [""]}, 400, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "media_io_kwargs": {"video": {"num_frames": 0}}}, 400,
     "media_io_kwargs.video.num_frames"),
    ({"messages": [{"role": "user", "content": "Why? " * 1100}]}, 400, "messages"),
    ({"messages": [user("?", video_part("https://example.com/a.mp4"))]}, 400, "messages[0].content[0].video_url.url"),
    ({"messages": [user("?", video_part("data:video/mp4;base64,@@@"))]}, 400, "messages[0].content[0].video_url.url"),
    ({"messages": [user("?", video_part("file:///etc/passwd"))]}, 403, "messages[0].content[0].video_url.url"),
    ({"messages": [user("?", video_part("file://ROOT/link.mp4"))]}, 403, "messages[0].content[0].video_url.url"),
    ({"messages": [user("?", video_part("file://ROOT/../outside/secret.mp4"))]}, 403,
     "messages[0].content[0].video_url.url"),
    ({"messages": [user("?", video_part("file://ROOT/missing.mp4"))]}, 404, "messages[0].content[0].video_url.url"),
    ({"messages": [user("?", video_part("file://ROOT/corrupt.mp4"))]}, 400, "messages[0].content[0].video_url.url"),
    ({"messages": [user("?", video_part(f"file://ROOT/{VIDEO}"), image_part(f"file://ROOT/{IMAGE}"))]}, 400,
     "messages[0].content[1].image_url.url"),
    ({"messages": [user("?", {"type": "audio_url", "audio_url": {"url": f"file://ROOT/{WAV}"}})]}, 400,
     "messages[0].content[0].audio_url.url"),
    ({"messages": [user("?", video_part(f"file://ROOT/{VIDEO}"))],
      "mm_processor_kwargs": {"use_audio_in_video": True}}, 400, "mm_processor_kwargs.use_audio_in_video"),
]


def test_bad_inputs_are_4xx_naming_the_field_and_the_server_keeps_serving(vserver, vclient, root):
    url = vserver.url + "/chat/completions"
    with httpx.Client(timeout=120) as c:
        for body, status, param in BAD:
            if isinstance(body, bytes):
                r = c.post(url, content=body, headers={"content-type": "application/json"})
            else:
                r = c.post(url, content=json.dumps(body).replace("ROOT", str(root)))
            assert r.status_code == status, (body, r.text)
            err = r.json()["error"]
            assert err["param"] == param and err["message"] and err["type"], (body, err)
        # 413: over the body cap (4 MiB here)
        r = c.post(url, content=b"{" + b" " * (5 * 2 ** 20) + b"}")
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    r = vclient.chat.completions.create(model="v_mistral_clip_stc", max_tokens=24,
                                        messages=[user("Still there?", video_part(f"file://{root / VIDEO}"))])
    assert r.choices[0].message.content == vserver.server.model.chat(
        "Still there?", video=str(root / VIDEO), max_new_tokens=24)


def test_api_key_and_no_media_root(avserver, root):
    url = avserver.url + "/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(url, json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["param"] == "Authorization"
    assert httpx.get(avserver.url + "/models").status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(avserver.url + "/models", headers=auth).json()["data"][0]["id"] == "av_qwen2_clip_stc"
    assert httpx.get(avserver.url.rsplit("/v1", 1)[0] + "/health").status_code == 200  # health needs no key
    body["messages"] = [user("?", video_part(f"file://{root / VIDEO}"))]
    r = httpx.post(url, json=body, headers=auth)
    assert r.status_code == 400 and "--media-root" in r.json()["error"]["message"]


@pytest.mark.slow
def test_serve_command_prints_its_address_and_answers(root):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "vllama_jax", "serve", "--model", str(FIXTURES / "v_mistral_clip_stc"),
           "--port", "0", "--media-root", str(root), "--max-batch", "2"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline()
        assert "on http://127.0.0.1:" in line, (line, p.stderr.read() if p.poll() is not None else "")
        base = line.split("on ", 1)[1].split()[0]
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)
        r = client.chat.completions.create(model="v_mistral_clip_stc", max_tokens=3,
                                           messages=[user("Hi?", video_part(f"file://{root / VIDEO}"))])
        assert r.usage.completion_tokens >= 1
    finally:
        p.terminate()
        p.wait(timeout=60)
    assert "chatcmpl-" in p.stderr.read()  # one log line per request


@pytest.mark.slow
def test_load_test_compares_like_with_like(tmp_path):
    """benchmarks/serve_load.py, small: every answer equals model.chat's; with the server's media cache the
    sequential side decodes each file once too; each pass records where its CPU time went."""
    from benchmarks import serve_load

    entry = serve_load.run(str(tmp_path), clients=2, requests=2, max_tokens=4, media_cache_mb=64, log=lambda *a: None)
    assert entry["settings"]["sequential_media"] == "decoded once per file"
    for name in ("server_concurrent", "server_concurrent_streamed"):
        run = entry[name]
        assert run["requests"] == 4 and run["errors"] == 0 and run["answers_differing_from_chat"] == 0
        assert run["engine_cumulative"]["media_cache"]["misses"] == 2  # the image and the video, once each
        if sys.platform == "linux":
            assert run["cpu_s"]["server"] > 0 and run["cpu_s"]["clients"] > 0
    assert (tmp_path / "bench.json").exists() and (tmp_path / "serve.png").exists()
