"""`vllama-jax serve --model DIR [--host 127.0.0.1] [--port 8000] [--media-root DIR] [--max-batch N]`: an
OpenAI-compatible server (POST /v1/chat/completions, GET /v1/models, GET /health) with continuous
batching; see vllama_jax/serve/ and the README's "Serving" section."""
import logging
import os

from vllama_jax.commands.flags import add_model_flags, load_model

HELP = "serve a checkpoint over OpenAI's chat-completions API (video / image / audio, continuous batching)"


def add_arguments(p):
    add_model_flags(p, context_help="positions per request (prompt + answer); default the checkpoint's "
                                    "max_position_embeddings; more lets RoPE run past the trained length")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--media-root", help="serve file:// URLs from under this folder (default: refuse file:// URLs)")
    p.add_argument("--max-batch", type=int, default=8, help="KV-cache slots: requests decoded together")
    p.add_argument("--max-len", type=int, help="KV-cache length of a slot (default: the context, capped at 8192)")
    p.add_argument("--api-key", default=os.environ.get("VLLAMA_JAX_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $VLLAMA_JAX_API_KEY, else none)")
    p.add_argument("--served-model-name", help="the model id clients send (default: the folder's name)")
    p.add_argument("--max-tokens", type=int, default=256, help="max_tokens of a request that sets none")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="request body cap (413 above it)")
    p.add_argument("--workers", type=int, help="threads decoding media and tokenizing (default: one per core, at "
                   "most 8)")
    p.add_argument("--media-cache-mb", type=float, default=1024.0,
                   help="decoded media kept for later requests about the same file or data (LRU; 0: decode "
                        "every request)")
    p.add_argument("--decode-steps", type=int, default=1, help="tokens per compiled decode call (1: a request "
                   "joins at the very next token; more: less host work per token)")
    p.add_argument("--no-warmup", action="store_true", help="do not compile the decode step before serving")


def main(args) -> int:
    import uvicorn

    from vllama_jax.serve.app import Server, _uvicorn_server_class, create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = load_model(args)
    max_len = args.max_len or min(model.max_context, 8192)
    server = Server(model, max_batch=args.max_batch, max_len=max_len, media_root=args.media_root,
                    api_key=args.api_key, name=args.served_model_name, max_body=int(args.max_body_mb * 2 ** 20),
                    workers=args.workers, default_max_tokens=args.max_tokens,
                    decode_steps=args.decode_steps, media_cache_mb=args.media_cache_mb)
    server.start(warmup=not args.no_warmup)

    class Announcing(_uvicorn_server_class()):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.port is not None:
                print(f"vllama-jax serve: {server.info.name} on http://{args.host}:{self.port}/v1 "
                      f"({args.max_batch} slots x {max_len} positions, media root {server.root.root or 'none'})",
                      flush=True)

    config = uvicorn.Config(create_app(server), host=args.host, port=args.port, log_level="warning",
                            access_log=False, lifespan="off")
    try:
        Announcing(config).run()
    finally:
        server.close()
    return 0
