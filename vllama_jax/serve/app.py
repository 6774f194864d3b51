"""The HTTP side: FastAPI routes in OpenAI's schema, server-sent events, the API key and the body cap.

    server = Server(model, max_batch=8, media_root="media/", api_key=None, media_cache_mb=1024)
    app = create_app(server)                           # GET /health, GET /v1/models, POST /v1/chat/completions
    handle = start_in_thread(server, "127.0.0.1", 0)    # tests and benchmarks: a real uvicorn server; .port, .stop()

A request is parsed and validated here (openai_schema.py), its media decoded and its prompt tokenized in
a worker pool (prompt.py, off the event loop and off the decode loop), then handed to the engine
(engine.py), whose thread sends text back through the event loop. Errors are OpenAI's body
`{"error": {"message", "type", "param", "code"}}`: 400 for a bad field, 401 without the key, 403 / 404 for
a file outside the media root / missing, 404 for another model name, 413 for a body over the cap; the
server keeps serving. One log line per request: id, prompt / completion tokens, latency, time to first token.
"""

import asyncio
import collections
import concurrent.futures
import json
import logging
import os
import secrets
import threading
import time
from typing import Optional

from vllama_jax.preprocess.media_cache import media_cache
from vllama_jax.preprocess.video import set_decode_threads
from vllama_jax.serve.engine import Engine
from vllama_jax.serve.errors import RequestError, error_body
from vllama_jax.serve.media import MediaRoot
from vllama_jax.serve.openai_schema import ModelInfo, chunk, completion, new_id, parse_request, usage
from vllama_jax.serve.prompt import prepare

log = logging.getLogger("vllama_jax.serve")

DEFAULT_MAX_BODY = 64 * 2 ** 20  # bytes: a base64 video of ~45 MB


def default_workers() -> int:
    """Media-decoding threads by default: one per core, at most 8. With a small model, decoding a request's
    video (PyAV and numpy, mostly outside the GIL) takes more CPU time than its tokens do."""
    return max(1, min(8, os.cpu_count() or 2))


class Server:
    """The served model and everything a request needs: engine, media root, worker pool, key, limits."""

    def __init__(self, model, max_batch: int = 8, max_len: Optional[int] = None, media_root: Optional[str] = None,
                 api_key: Optional[str] = None, name: Optional[str] = None, max_body: int = DEFAULT_MAX_BODY,
                 workers: Optional[int] = None, default_max_tokens: int = 256, decode_steps: int = 1,
                 media_cache_mb: float = 0):
        if model.tokenizer is None:
            raise ValueError(f"{model.path}: no tokenizer files in the checkpoint folder; serving needs one")
        self.model = model
        self.tokenizer_lock = threading.Lock()
        self.engine = Engine(model, max_batch=max_batch, max_len=max_len, tokenizer_lock=self.tokenizer_lock,
                             decode_steps=decode_steps)
        self.root = MediaRoot(media_root)
        # Decoded media kept for later requests about the same file (0: decode every request).
        self.media_cache = media_cache(media_cache_mb)
        self.api_key = api_key
        self.max_body = max_body
        name = name or os.path.basename(os.path.normpath(model.path or "videollama2"))
        cfg = model.config
        self.info = ModelInfo(name, cfg.vision is not None, cfg.audio is not None, self.engine.max_len,
                              default_max_tokens)
        self.workers = workers or default_workers()
        # Several requests decode at once, one per worker: each video single-threaded (preprocess/video.py).
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="vllama-media", initializer=set_decode_threads,
            initargs=(1 if self.workers > 1 else None,))
        self.created = int(time.time())

    def start(self, warmup: bool = True):
        if warmup:
            self.engine.warmup()
        self.engine.start()

    def close(self):
        self.engine.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _error(status: int, message: str, type: str, param=None, code=None):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(message, type, param, code), status_code=status)


async def _read_body(request, limit: int) -> dict:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(f"the request body of {length} bytes is over this server's limit of {limit}", None,
                           status=413, type="request_too_large")
    chunks, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise RequestError(f"the request body is over this server's limit of {limit} bytes", None, status=413,
                               type="request_too_large")
        chunks.append(piece)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON ({e})", None) from None


async def _wait_disconnect(request):
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _Inbox:
    """Events from the engine thread to one request's coroutine: `put` from any thread, `get_all` drains
    everything waiting (at least one event). One wake-up of the event loop per burst, not per token."""

    def __init__(self, loop):
        self.loop, self.items, self.ready = loop, collections.deque(), asyncio.Event()

    def put(self, item):
        self.items.append(item)
        if not self.ready.is_set():  # a set flag means the coroutine will drain this item too
            self.loop.call_soon_threadsafe(self.ready.set)

    async def get_all(self) -> list:
        while not self.items:
            self.ready.clear()
            if self.items:
                break
            await self.ready.wait()
        out = []
        while self.items:
            out.append(self.items.popleft())
        return out


class _BearerKey:
    """ASGI middleware: /v1 routes need `Authorization: Bearer <key>` (a plain ASGI wrapper, so streamed
    responses pass through untouched)."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not (got.startswith(b"Bearer ") and secrets.compare_digest(got[7:].strip(), self.key)):
                response = _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                  "authentication_error", "Authorization", "invalid_api_key")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _sse(obj) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


def create_app(server: Server):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="vllama-jax", docs_url=None, redoc_url=None, openapi_url=None)
    engine, info = server.engine, server.info

    @app.exception_handler(RequestError)
    async def _request_error(request, e: RequestError):
        log.info("rejected %s %d param=%s: %s", request.url.path, e.status, e.param, e.message[:200])
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        return _error(e.status_code, str(e.detail), "not_found_error" if e.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal_error(request, e: Exception):
        log.exception("request failed")
        return _error(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    if server.api_key:
        app.add_middleware(_BearerKey, key=server.api_key)

    @app.get("/health")
    async def health():
        if not engine.alive:
            return _error(503, f"the decode loop is not running ({engine.error!r})", "server_error")
        cache = server.media_cache.stats() if server.media_cache is not None else None
        return {"status": "ok", **engine.load(), "media_workers": server.workers, "media_cache": cache}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": info.name, "object": "model", "created": server.created,
                                            "owned_by": "vllama-jax", "max_model_len": info.max_len}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        t0 = time.perf_counter()
        rid = new_id()
        body = await _read_body(request, server.max_body)
        req = parse_request(body, info)
        loop = asyncio.get_running_loop()
        prompt = await loop.run_in_executor(server.pool, prepare, server.model, req, server.root, info.max_len,
                                            server.tokenizer_lock, server.media_cache)
        inbox = _Inbox(loop)
        handle = engine.submit(prompt, req.params, lambda kind, x: inbox.put((kind, x)), stream=req.stream)
        created = int(time.time())

        def log_line(status: str):
            ttft = "-" if handle.first_token_at is None else f"{handle.first_token_at - t0:.3f}s"
            log.info("%s %s prompt_tokens=%d completion_tokens=%d latency=%.3fs ttft=%s", rid, status, prompt.n,
                     len(handle.ids), time.perf_counter() - t0, ttft)

        if req.stream:
            async def stream():
                status = "cancelled"
                try:
                    yield _sse(chunk(rid, info.name, created, {"role": "assistant", "content": ""}))
                    while True:
                        batch = await inbox.get_all()
                        # Text that piled up while the loop was busy goes out as one chunk.
                        text = "".join(x for kind, x in batch if kind == "text")
                        if text:
                            yield _sse(chunk(rid, info.name, created, {"content": text}))
                        kind, x = batch[-1]
                        if kind == "text":
                            continue
                        if kind == "done":
                            status = handle.finish_reason
                            yield _sse(chunk(rid, info.name, created, {}, handle.finish_reason))
                            if req.include_usage:
                                yield _sse(chunk(rid, info.name, created, None,
                                                 usage_=usage(prompt.n, len(handle.ids))))
                            yield "data: [DONE]\n\n"
                            return
                        else:
                            status = "error"
                            yield _sse(error_body(f"generation failed: {x}", "server_error"))
                            yield "data: [DONE]\n\n"
                            return
                finally:
                    if handle.finished_at is None:
                        engine.cancel(handle)
                    log_line(status)

            return StreamingResponse(stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Request-Id": rid})

        watch = asyncio.ensure_future(_wait_disconnect(request))
        try:
            while True:
                getter = asyncio.ensure_future(inbox.get_all())
                done, _ = await asyncio.wait({getter, watch}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    engine.cancel(handle)
                    log_line("disconnected")
                    return JSONResponse(error_body("client disconnected", "cancelled"), status_code=499)
                kind, x = getter.result()[-1]
                if kind == "done":
                    log_line(handle.finish_reason)
                    return completion(rid, info.name, handle.answer, handle.finish_reason, prompt.n,
                                      len(handle.ids), created)
                if kind == "error":
                    log_line("error")
                    return _error(500, f"generation failed: {x}", "server_error")
        finally:
            watch.cancel()

    return app


class ServerThread:
    """A uvicorn server on its own thread (tests, benchmarks): `.port`, `.url`, `.stop()`."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = server
        self.uvicorn = _Uvicorn(uvicorn.Config(create_app(server), host=host, port=port, log_level="warning",
                                               access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.uvicorn.run, name="vllama-http", daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while self.uvicorn.port is None:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        self.host, self.port = host, self.uvicorn.port
        self.url = f"http://{host}:{self.port}/v1"

    def stop(self):
        self.uvicorn.should_exit = True
        self.thread.join(timeout=30)


def start_in_thread(server: Server, host: str = "127.0.0.1", port: int = 0, warmup: bool = True) -> ServerThread:
    server.start(warmup=warmup)
    return ServerThread(server, host, port)


def _uvicorn_server_class():
    import uvicorn

    class Uvicorn(uvicorn.Server):
        port: Optional[int] = None

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.servers and self.servers[0].sockets:
                self.port = self.servers[0].sockets[0].getsockname()[1]

    return Uvicorn


def _Uvicorn(config):
    return _uvicorn_server_class()(config)
