"""Load test of `vllama-jax serve` on 127.0.0.1 against sequential `model.chat` calls, in one run.

    python benchmarks/serve_load.py --out DIR [--model DIR] [--clients 8] [--requests 16] [--max-tokens 64]
                                    [--media-cache-mb 0] [--workers N]
    vllama-jax bench --serve --out DIR                    (the same, from the bench command)

The server runs without its media cache unless `--media-cache-mb` is given. The requests ask about two
files, so with the cache every request after the first two skips decoding; the sequential baseline then
decodes each file once too (`model.load_media` on its first request, the arrays kept for the rest, each
question through `ChatSession.ask`: what `model.chat` does, less the repeated decoding), so both sides do
the same work and the ratio is the engine's own: batching against one request at a time. Without the
cache both sides decode every request's media, which on a machine with few cores bounds the ratio
(bench.json records the setting and the core count).

1. Starts `python -m vllama_jax serve` in a subprocess on a free port of 127.0.0.1 (its own process,
   so the clients here do not share its interpreter), with `--max-batch` slots.
2. Sequential baseline: the same requests one after another through `model.chat` in this process
   (streamed, for the time to first token); the first of each shape runs untimed (compilation).
3. Concurrent: `clients` threads, each sending `requests` chat completions (httpx) one after another,
   twice: streamed (SSE: time to first token) and whole answers (as evaluation harnesses ask); the
   server's compiled programs are warmed by one untimed request of each shape first.

Reports requests/s, generated tokens/s, latency p50 / p99 and time to first token p50 / p99 of both,
the ratio of throughputs (`throughput_ratio`: whole answers; the streamed pass has its own), the CPU
seconds each pass took in the clients' process and in the server's (`cpu_s`: a server near one CPU second
per second of the pass is bound by its Python threads), and the machine's load average before and after
(other processes on the machine move every figure). Writes `DIR/bench.json` (a "serve" entry, merged into an existing file) and
`DIR/serve.png`. The requests: questions about an image and a video of tests/data/media, as file:// URLs
under the server's --media-root; every answer is checked against `model.chat`'s (greedy).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional

import vllama_jax
from vllama_jax.inference import ChatSession

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_MODEL = os.path.join(ROOT, "tests", "data", "fixtures", "av_qwen2_clip_stc")
MEDIA = os.path.join(ROOT, "tests", "data", "media")
QUESTIONS = ["What happens?", "Describe the scene.", "What is unusual here?", "Who is there?", "What colour is it?",
             "What comes next?", "Where is this?", "How many people?"]
FILES = [("image", "extreme_ironing.jpg"), ("video", "sample_demo_3.mp4")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: List[float], q: float) -> Optional[float]:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _cpu_s(pid: int) -> Optional[float]:
    """CPU seconds (user + system) used so far by process `pid` (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _summary(latencies, ttfts, tokens, wall) -> dict:
    n = len(latencies)
    return {"requests": n, "wall_s": wall, "requests_per_s": n / wall, "tokens_per_s": sum(tokens) / wall,
            "latency_p50_s": _pct(latencies, 50), "latency_p99_s": _pct(latencies, 99),
            "ttft_p50_s": _pct(ttfts, 50), "ttft_p99_s": _pct(ttfts, 99), "completion_tokens": sum(tokens)}


def workload(n: int, media_dir: str = MEDIA):
    """n requests: (question, kind, path), cycling through questions and media."""
    return [(QUESTIONS[i % len(QUESTIONS)], *FILES[i % len(FILES)][:1], os.path.join(media_dir, FILES[i % len(FILES)][1]))
            for i in range(n)]


def _body(question, kind, path, max_tokens, stream=True):
    part = {"type": f"{kind}_url", f"{kind}_url": {"url": "file://" + path}}
    body = {"messages": [{"role": "user", "content": [part, {"type": "text", "text": question}]}],
            "max_tokens": max_tokens, "temperature": 0}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _request(client, url, body):
    """One request -> (answer, latency s, ttft s (None unless streamed), completion tokens)."""
    t0 = time.perf_counter()
    if not body.get("stream"):
        r = client.post(url, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:500]}")
        out = r.json()
        return (out["choices"][0]["message"]["content"], time.perf_counter() - t0, None,
                out["usage"]["completion_tokens"])
    ttft, pieces, tokens = None, [], 0
    with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.read()[:500]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ch = json.loads(line[6:])
            if ch.get("usage"):
                tokens = ch["usage"]["completion_tokens"]
            for c in ch.get("choices", []):
                if c["delta"].get("content"):
                    ttft = ttft or time.perf_counter() - t0
                    pieces.append(c["delta"]["content"])
    return "".join(pieces), time.perf_counter() - t0, ttft, tokens


def start_server(model_dir, port, max_batch, max_len, max_context, decode_steps, log, server_log,
                 media_cache_mb=0.0, workers=None):
    cmd = [sys.executable, "-m", "vllama_jax", "serve", "--model", model_dir, "--port", str(port),
           "--media-root", MEDIA, "--max-batch", str(max_batch), "--decode-steps", str(decode_steps),
           "--media-cache-mb", str(media_cache_mb)]
    if max_len:
        cmd += ["--max-len", str(max_len)]
    if workers:
        cmd += ["--workers", str(workers)]
    if max_context:
        cmd += ["--max-context", str(max_context)]
    log("starting: " + " ".join(cmd))
    # The server's log (one line per request, and why it stopped if it did) goes to DIR/server.log.
    err = open(server_log, "w")
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    err.close()
    line = p.stdout.readline()
    if "on http://" not in line:
        p.kill()
        p.wait()
        with open(server_log) as f:
            tail = "".join(f.readlines()[-20:])
        raise RuntimeError(f"the server did not start (stdout {line!r}); the end of {server_log}:\n{tail}")
    log(line.strip())
    return p, line.split("on ", 1)[1].split()[0]


def run(out_dir: str, model_dir: str = DEFAULT_MODEL, clients: int = 8, requests: int = 16, max_tokens: int = 64,
        max_batch: int = 8, max_len: Optional[int] = 256, max_context: Optional[int] = None, decode_steps: int = 1,
        log=print, media_cache_mb: float = 0.0, workers: Optional[int] = None) -> dict:
    import httpx

    os.makedirs(out_dir, exist_ok=True)
    load_before = os.getloadavg()[0]
    jobs = workload(clients * requests)

    # --- sequential model.chat ------------------------------------------------------------------------------
    model = vllama_jax.load(model_dir, max_context=max_context)
    for kind, name in FILES:  # compile each shape untimed (streaming is its own compiled program)
        model.chat(QUESTIONS[0], **{kind: os.path.join(MEDIA, name)}, max_new_tokens=max_tokens, stream=lambda s: None)
    refs, lat, ttft, decoded = {}, [], [], {}
    t_seq = time.perf_counter()
    for q, kind, path in jobs:
        t0, first = time.perf_counter(), []
        on_text = lambda s: first.append(time.perf_counter() - t0) if not first else None
        if media_cache_mb > 0:  # as the server's cache: each file decoded once, on its first request
            if (kind, path) not in decoded:
                decoded[(kind, path)] = model.load_media(**{kind: path})
            ans = ChatSession(model, decoded[(kind, path)]).ask(q, max_new_tokens=max_tokens, stream=on_text)
        else:
            ans = model.chat(q, **{kind: path}, max_new_tokens=max_tokens, stream=on_text)
        lat.append(time.perf_counter() - t0)
        ttft.append(first[0] if first else lat[-1])
        refs[(q, path)] = ans
    seq_wall = time.perf_counter() - t_seq
    log(f"sequential model.chat{' (each file decoded once)' if decoded else ''}: {len(jobs) / seq_wall:.2f} req/s")

    # --- concurrent clients against the server ----------------------------------------------------------------
    proc, base = start_server(model_dir, _free_port(), max_batch, max_len, max_context, decode_steps, log,
                              os.path.join(out_dir, "server.log"), media_cache_mb, workers)
    url = base + "/chat/completions"
    try:
        with httpx.Client(timeout=600) as c:
            for kind, name in FILES:  # compile each prefill shape untimed
                _request(c, url, _body(QUESTIONS[0], kind, os.path.join(MEDIA, name), max_tokens))
        passes = {}
        for stream in (True, False):  # streamed (time to first token), then whole answers (as eval harnesses ask)
            results, errors = [], []

            def client(my_jobs):
                with httpx.Client(timeout=600) as c:
                    for q, kind, path in my_jobs:
                        try:
                            results.append(((q, path), *_request(c, url, _body(q, kind, path, max_tokens, stream))))
                        except Exception as e:
                            errors.append(repr(e))

            # Client i sends jobs [i * requests, (i + 1) * requests): each client a mix of images and
            # videos. (Striding, jobs[i::clients], gave half the clients only images with an even client
            # count: they finished early, and the rest of the run had half the concurrency.)
            threads = [threading.Thread(target=client, args=(jobs[i * requests:(i + 1) * requests],))
                       for i in range(clients)]
            t_conc = time.perf_counter()
            cpu0 = (_cpu_s(os.getpid()), _cpu_s(proc.pid))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t_conc
            cpu1 = (_cpu_s(os.getpid()), _cpu_s(proc.pid))
            # Where the CPU went in the pass: this process (the clients) and the server's (every thread).
            cpu = None if None in cpu0 + cpu1 else {"clients": cpu1[0] - cpu0[0], "server": cpu1[1] - cpu0[1]}
            health = httpx.get(base.rsplit("/v1", 1)[0] + "/health").json()  # where the server's time went
            passes[stream] = (results, errors, wall, health, cpu)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    usage = {r[0]: r[4] for r in passes[True][0]}  # the same greedy answers: the server's counts are chat's
    sequential = _summary(lat, ttft, [usage.get((q, path), 0) for q, _, path in jobs], seq_wall)
    out = {}
    for stream, (results, errors, wall, health, cpu) in passes.items():
        summary = _summary([r[2] for r in results], [r[3] for r in results if r[3] is not None],
                           [r[4] for r in results], wall)
        mismatches = sum(r[1] != refs[r[0]] for r in results)
        summary.update(streamed=stream, errors=len(errors), answers_differing_from_chat=mismatches,
                       engine_cumulative=health, cpu_s=cpu, ratio=summary["requests_per_s"] / sequential["requests_per_s"])
        out[stream] = summary
        log(f"{clients} concurrent clients ({'streamed' if stream else 'whole answers'}): "
            f"{summary['requests_per_s']:.2f} req/s ({summary['ratio']:.2f}x sequential), p50 "
            f"{summary['latency_p50_s']:.3f} s, p99 {summary['latency_p99_s']:.3f} s, TTFT p50 "
            f"{'-' if summary['ttft_p50_s'] is None else format(summary['ttft_p50_s'], '.3f')} s; "
            f"errors {len(errors)}, answers differing {mismatches}")
    concurrent, streamed = out[False], out[True]
    ratio = concurrent["ratio"]

    entry = {"model": os.path.relpath(model_dir, ROOT) if model_dir.startswith(ROOT) else model_dir,
             "settings": {"clients": clients, "requests_per_client": requests, "max_tokens": max_tokens,
                          "max_batch": max_batch, "max_len": max_len, "decode_steps": decode_steps,
                          "media_cache_mb": media_cache_mb,
                          "sequential_media": "decoded once per file" if decoded else "decoded every request",
                          "media_workers": passes[False][3].get("media_workers"),
                          "media": [f for _, f in FILES], "greedy": True},
             "sequential_model_chat": sequential, "server_concurrent": concurrent,
             "server_concurrent_streamed": streamed,
             "throughput_ratio": ratio, "goal_ratio": 4.0,
             "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}, "cpu_count": os.cpu_count()}
    path = os.path.join(out_dir, "bench.json")
    report = {}
    if os.path.isfile(path):
        with open(path) as f:
            report = json.load(f)
    report["serve"] = entry
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    plot(entry, os.path.join(out_dir, "serve.png"))
    log(f"wrote {path} and {os.path.join(out_dir, 'serve.png')}")
    return entry


def plot(entry: dict, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, c, st = entry["sequential_model_chat"], entry["server_concurrent"], entry["server_concurrent_streamed"]
    n = entry["settings"]["clients"]
    labels = ["sequential\nmodel.chat", f"{n} clients\nwhole answers", f"{n} clients\nstreamed"]
    rows = [s, c, st]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].bar(labels, [r["requests_per_s"] for r in rows], color=["#999", "#3a7", "#7a3"])
    axes[0].set_title(f"throughput (req/s): {entry['throughput_ratio']:.2f}x / {st['ratio']:.2f}x")
    for ax, key, title in ((axes[1], "latency", "latency (s)"), (axes[2], "ttft", "time to first token (s)")):
        x = [i for i, r in enumerate(rows) if r[f"{key}_p50_s"] is not None]
        ax.bar([i - 0.2 for i in x], [rows[i][f"{key}_p50_s"] for i in x], 0.4, label="p50", color="#58c")
        ax.bar([i + 0.2 for i in x], [rows[i][f"{key}_p99_s"] for i in x], 0.4, label="p99", color="#c85")
        ax.set_xticks(x, [labels[i] for i in x])
        ax.set_title(title)
        ax.legend()
    la = entry["load_average_1min"]
    fig.suptitle(f"vllama-jax serve, {entry['model']}, {entry['settings']['max_tokens']} tokens/answer, "
                 f"load avg {la['before']:.1f} -> {la['after']:.1f} on {entry['cpu_count']} CPUs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p):
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder (default: the AV fixture)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=16, help="requests per client (16: the ramp-up and the "
                   "drain at the end are a small part of the run)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-len", type=int, default=256, help="KV-cache length of a slot (the workload's prompts "
                   "are ~70 tokens + max_tokens)")
    p.add_argument("--max-context", type=int)
    p.add_argument("--decode-steps", type=int, default=1)
    p.add_argument("--media-cache-mb", type=float, default=0.0, help="the server's media cache (default 0: every "
                   "request decodes its media, as each sequential model.chat call does; > 0: both sides decode "
                   "each file once)")
    p.add_argument("--workers", type=int, help="the server's media-decoding threads (default: its own, one per "
                   "core, at most 8)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    add_arguments(ap)
    a = ap.parse_args(argv)
    run(a.out, a.model, a.clients, a.requests, a.max_tokens, a.max_batch, a.max_len, a.max_context, a.decode_steps,
        media_cache_mb=a.media_cache_mb, workers=a.workers)


if __name__ == "__main__":
    main()
