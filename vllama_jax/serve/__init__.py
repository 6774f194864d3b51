"""`vllama-jax serve`: VideoLLaMA 2 behind OpenAI's chat-completions API, with continuous batching.

    openai_schema.py   request JSON -> messages + media refs + sampling params (errors name the field)
    media.py           file:// (under the media root) / data: URLs -> local files -> pre-processed arrays
    prompt.py          messages + media -> the engine's Prompt (model.chat's template and tokenization)
    engine.py          the decode loop: a fixed KV cache of slots, one compiled step for all live requests
    app.py             FastAPI routes, server-sent events, API key, body cap; a uvicorn thread for tests
"""
