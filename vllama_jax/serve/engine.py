"""The continuous-batching decode loop: a fixed set of KV-cache slots, one compiled step for all of them.

    engine = Engine(model, max_batch=8, max_len=2048)
    engine.start()
    handle = engine.submit(prompt, params, on_event)    # from any thread; on_event(kind, payload)
    engine.cancel(handle)                               # a disconnected client: its slot is freed at once

Device state (static shapes: compiled once for the step, once per prompt bucket for the prefill):

    cache      {"k", "v"}: (layers, B, S, KVH, hd)   B = max_batch slots, S = max_len (models/decoder.py)
    key_mask   (B, S) bool      which slots of each row hold real tokens
    logits     (B, V) float32   each row's next-token logits
    pos        (B,) int32       each row's next position = its next write slot (prompts start at slot 0)
    keys       (B, 2) uint32    each row's PRNG key, split once per step as generate.py does
    temperature, top_p (B,) float32; top_k (B,) int32: each row's sampling parameters

A request's prompt (B=1, text padded to a length bucket, media spliced by `VideoLLaMA2.prepare_inputs`)
is prefilled into its free slot between two steps: its real tokens are moved to the front (slots
[0, n), positions 0..n-1), so positions equal slots and the slot's write offset is n. Then every step
samples one token per row from `logits` and runs the decoder on them with a per-row write slot
(layers/attention.py), so rows of different lengths advance together. A row stops at EOS, at its
`max_tokens`, at a stop string or when its client goes away, and its slot is free for the next prompt
at once. The host reads the (B,) tokens after each step, detokenizes and hands text to the waiting
requests; nothing waits for another request's whole generation. With `decode_steps` k > 1 one compiled
call runs k such steps (tokens (B, k)), and requests join and leave every k tokens.

Sampling per row is generate.py's (temperature, then top-k, then top-p, then a categorical draw with
the row's key), so greedy and seeded answers equal `model.chat`'s for the same prompt.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vllama_jax.inference import media_batch
from vllama_jax.models.decoder import init_cache
from vllama_jax.models.videollama2 import VideoLLaMA2

log = logging.getLogger("vllama_jax.serve")


@dataclasses.dataclass
class Prompt:
    """A tokenized request: ids (L,) with one placeholder when it has media; media as `media_batch` takes
    a sample ({"video" (T,3,H,W) | "image" (1,3,H,W), "audio" (F,128)}) or None; n = its real spliced
    length (text tokens without the placeholder + media tokens)."""
    ids: np.ndarray
    media: Optional[dict]
    n: int
    num_frames: Optional[int] = None


@dataclasses.dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: Sequence[str] = ()


class Handle:
    """One request's life in the engine; `on_event(kind, payload)` is called from the engine thread:
    ("text", str) for each new piece of answer text, ("done", Handle) once, ("error", Exception) once."""

    def __init__(self, prompt: Prompt, params: SamplingParams, on_event: Callable, stream: bool = True):
        self.prompt, self.params, self.on_event = prompt, params, on_event
        self.stream = stream  # False: no ("text", ...) events, only "done" (less work per token)
        self.ids: List[int] = []  # tokens sampled, an EOS that ended it included
        self.text = ""  # the answer so far (what has been sent)
        self.answer: Optional[str] = None  # the whole answer, once finished (`model.chat`'s text)
        self.finish_reason: Optional[str] = None
        self.cancelled = False
        self.submitted = time.perf_counter()
        self.first_token_at: Optional[float] = None
        self.finished_at: Optional[float] = None
        self.slot: Optional[int] = None
        self._emitted = 0


@functools.lru_cache(maxsize=4096)
def _prng_key(seed: int) -> np.ndarray:
    """`jax.random.PRNGKey(seed)` as model.chat makes it, computed once per seed (greedy requests share 0)."""
    key = np.asarray(jax.random.PRNGKey(seed))
    key.setflags(write=False)
    return key


def _bucket(n: int, size: int) -> int:
    return -(-n // size) * size


def right_align(embeds, mask):
    """Move each row's attended positions to the front, keeping their order: (B, L, D), (B, L) -> same."""
    l = mask.shape[1]
    order = jnp.argsort(jnp.where(mask, 0, 1) * l + jnp.arange(l)[None, :], axis=1)
    return jnp.take_along_axis(embeds, order[..., None], axis=1), jnp.take_along_axis(mask, order, axis=1)


def sample_rows(logits, keys, temperature, top_k, top_p):
    """(B, V) logits, (B, 2) keys, (B,) params -> (B,) tokens, (B, 2) next keys.

    Row by row what generate.sample_next does with a (1, V) batch and the same key: greedy where
    temperature is 0, else temperature, top-k (0 = off), top-p (1 = off), a categorical draw."""
    neg = jnp.finfo(jnp.float32).min

    def one(lg, key, t, k, p):
        key, sub = jax.random.split(key)
        greedy = jnp.argmax(lg).astype(jnp.int32)
        x = lg.astype(jnp.float32) / jnp.where(t > 0, t, 1.0)
        v = x.shape[-1]
        kth = jnp.sort(x)[::-1][jnp.clip(k - 1, 0, v - 1)]
        x = jnp.where((k > 0) & (k < v) & (x < kth), neg, x)
        s = jnp.sort(x)[::-1]
        probs = jax.nn.softmax(s)
        keep = (jnp.cumsum(probs) - probs) < p
        cutoff = jnp.min(jnp.where(keep, s, jnp.inf))
        x = jnp.where((p < 1.0) & (x < cutoff), neg, x)
        drawn = jax.random.categorical(sub, x[None], axis=-1)[0].astype(jnp.int32)
        return jnp.where(t > 0, drawn, greedy), key

    def next_key(key):  # what `one` returns as the row's next key
        return jax.random.split(key)[0]

    # A batch of greedy rows (the common case) skips the sorts of top-k / top-p over the vocabulary; the
    # keys advance as they would have, so a later sampled request's draws do not depend on its neighbours.
    return jax.lax.cond(jnp.any(temperature > 0),
                        lambda: jax.vmap(one)(logits, keys, temperature, top_k, top_p),
                        lambda: (jnp.argmax(logits, axis=-1).astype(jnp.int32), jax.vmap(next_key)(keys)))


class Engine:
    """Continuous batching over `max_batch` KV-cache slots of `max_len` positions (see the module doc)."""

    def __init__(self, model, max_batch: int = 8, max_len: Optional[int] = None, length_bucket: Optional[int] = None,
                 tokenizer_lock: Optional[threading.Lock] = None, decode_steps: int = 1):
        self.model = model
        self.cfg = model.config.decoder
        self.max_batch = int(max_batch)
        self.max_len = int(max_len or model.max_context)
        self.length_bucket = length_bucket or getattr(model, "length_bucket", 64)  # as model.generate pads
        # Tokens per compiled call: 1 lets a new request join at the very next token; k > 1 runs k steps
        # in one call (less host work per token; a request joins or leaves at the next call).
        self.decode_steps = int(decode_steps)
        self.eos = set(self.cfg.eos_ids)
        self.tokenizer = model.tokenizer
        self.tokenizer_lock = tokenizer_lock or threading.Lock()
        self._queue: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._slots: List[Optional[Handle]] = [None] * self.max_batch
        self._thread: Optional[threading.Thread] = None
        self._stop = False
        self.error: Optional[BaseException] = None
        self.steps = 0
        # Where the loop's time goes, and how many requests left before their end (client gone).
        self.timers = {"prefill_s": 0.0, "step_s": 0.0, "host_s": 0.0, "prefills": 0, "cancelled": 0}
        self._state = None
        self._prefills: Dict[tuple, Callable] = {}
        self._step = jax.jit(self._step_fn, donate_argnums=(1,))

    # --- device functions --------------------------------------------------------------------------------
    def _init_state(self):
        b, s, v = self.max_batch, self.max_len, self.cfg.vocab_size
        return {"cache": self._cache(b, s), "key_mask": jnp.zeros((b, s), bool),
                "logits": jnp.zeros((b, v), jnp.float32), "pos": jnp.zeros((b,), jnp.int32),
                "keys": jnp.zeros((b, 2), jnp.uint32), "temperature": jnp.zeros((b,), jnp.float32),
                "top_k": jnp.zeros((b,), jnp.int32), "top_p": jnp.ones((b,), jnp.float32)}

    def _cache(self, batch: int, length: int):
        """An empty KV cache in the model's decode layout (stacked, or one per layer: models/decoder.py)."""
        return init_cache(self.cfg, batch, length, self.model.dtype, per_layer=self.model.decode_layout != "scan")

    def _decode(self, params, **kw):
        return self.model.module.apply({"params": params}, method=VideoLLaMA2.decode, **kw)

    def _step_fn(self, params, state, active):
        """`decode_steps` tokens for every row -> (state, tokens (B, decode_steps))."""
        if self.decode_steps == 1:
            state, tok = self._one_step(params, state, active)
            return state, tok[:, None]
        state, toks = jax.lax.scan(lambda st, _: self._one_step(params, st, active), state, None,
                                   length=self.decode_steps)
        return state, toks.T

    def _one_step(self, params, state, active):
        """One token for every row: sample from `logits`, write it at `pos`, compute the next logits."""
        tok, keys = sample_rows(state["logits"], state["keys"], state["temperature"], state["top_k"],
                                state["top_p"])
        s = self.max_len
        pos = jnp.minimum(state["pos"], s - 1)
        rows = jnp.arange(self.max_batch)
        key_mask = state["key_mask"].at[rows, pos].set(state["key_mask"][rows, pos] | active)
        logits, cache = self._decode(params, input_ids=tok[:, None], attention_mask=key_mask, positions=pos[:, None],
                                     cache=state["cache"], cache_index=pos)
        new = dict(state, cache=cache, key_mask=key_mask, logits=logits[:, -1],
                   pos=state["pos"] + active.astype(jnp.int32), keys=keys)
        return new, tok

    def _prefill_fn(self, params, state, batch, slot, key, temperature, top_k, top_p):
        """Prefill one prompt (B=1) into row `slot` of the state."""
        prep = self.model.module.apply({"params": params}, batch, method=VideoLLaMA2.prepare_inputs)
        embeds, mask = right_align(prep["inputs_embeds"], prep["attention_mask"])
        lp = mask.shape[1]
        n = mask.sum(axis=1).astype(jnp.int32)  # (1,)
        positions = jnp.broadcast_to(jnp.arange(lp, dtype=jnp.int32), (1, lp))
        small = self._cache(1, lp)
        logits, small = self._decode(params, inputs_embeds=embeds, attention_mask=mask, positions=positions,
                                     cache=small, cache_index=0)
        last = jnp.take_along_axis(logits, (n - 1)[:, None, None], axis=1)[:, 0]  # (1, V)
        keep = min(lp, self.max_len)
        if isinstance(small, list):  # one (B, S, KVH, hd) pair per layer
            cache = [{name: jax.lax.dynamic_update_slice(big[name], one[name][:, :keep], (slot, 0, 0, 0))
                      for name in ("k", "v")} for big, one in zip(state["cache"], small)]
        else:  # stacked (layers, B, S, KVH, hd)
            cache = {name: jax.lax.dynamic_update_slice(state["cache"][name], small[name][:, :, :keep],
                                                        (0, slot, 0, 0, 0)) for name in ("k", "v")}
        row_mask = jnp.arange(self.max_len)[None] < n[:, None]
        upd = lambda x, v: jax.lax.dynamic_update_slice(x, v.astype(x.dtype), (slot,) + (0,) * (x.ndim - 1))
        return dict(state, cache=cache, key_mask=upd(state["key_mask"], row_mask), logits=upd(state["logits"], last),
                    pos=upd(state["pos"], n), keys=upd(state["keys"], key[None]),
                    temperature=upd(state["temperature"], temperature[None]), top_k=upd(state["top_k"], top_k[None]),
                    top_p=upd(state["top_p"], top_p[None]))

    def prefill_batch(self, prompt: Prompt) -> dict:
        """The B=1 model batch of a prompt, text left-padded to a length bucket as `model.generate` does."""
        ids = np.asarray(prompt.ids, np.int64)
        length = _bucket(len(ids), self.length_bucket)
        pad = length - len(ids)
        ids = np.concatenate([np.zeros((pad,), np.int64), ids])[None]
        mask = np.concatenate([np.zeros((pad,), bool), np.ones((len(prompt.ids),), bool)])[None]
        media = media_batch([prompt.media], self.model.config, num_frames=prompt.num_frames)
        # numpy: the jitted prefill takes it as it is (no eager device op on the engine thread)
        return {"input_ids": ids.astype(np.int32), "attention_mask": mask, **{k: np.asarray(v) for k, v in media.items()}}

    def _prefill(self, handle: Handle, slot: int):
        batch = self.prefill_batch(handle.prompt)
        key = tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items()))
        if key not in self._prefills:
            self._prefills[key] = jax.jit(self._prefill_fn, donate_argnums=(1,))
        p = handle.params
        t0 = time.perf_counter()
        self._state = self._prefills[key](
            self.model.params, self._state, batch, np.int32(slot), _prng_key(p.seed),
            np.float32(p.temperature), np.int32(p.top_k), np.float32(p.top_p))
        jax.block_until_ready(self._state["pos"])
        self.timers["prefill_s"] += time.perf_counter() - t0
        self.timers["prefills"] += 1

    def warmup(self, prompts: Sequence[Prompt] = ()):
        """Compile the step (and the prefill of each given prompt's shape) before serving."""
        if self._state is None:
            self._state = self._init_state()
        for pr in prompts:
            h = Handle(pr, SamplingParams(max_tokens=1), lambda *a: None)
            self._prefill(h, 0)
        self._state, tok = self._step(self.model.params, self._state, jnp.zeros((self.max_batch,), bool))
        np.asarray(tok)

    # --- host side ---------------------------------------------------------------------------------------
    def start(self):
        if self._state is None:
            self._state = self._init_state()
        self._thread = threading.Thread(target=self._run, name="vllama-engine", daemon=True)
        self._thread.start()

    def stop(self):
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    def submit(self, prompt: Prompt, params: SamplingParams, on_event: Callable, stream: bool = True) -> Handle:
        if prompt.n + params.max_tokens > self.max_len:
            raise ValueError(f"prompt of {prompt.n} tokens + max_tokens {params.max_tokens} exceeds the "
                             f"{self.max_len} positions of a slot")
        h = Handle(prompt, params, on_event, stream)
        with self._cv:
            if not self.alive:
                raise RuntimeError(f"the engine is not running ({self.error!r})")
            self._queue.append(h)
            self._cv.notify_all()
        return h

    def cancel(self, handle: Handle):
        handle.cancelled = True  # read by the engine thread before its next step
        with self._cv:
            self._cv.notify_all()

    def load(self) -> dict:
        return {"running": sum(h is not None for h in self._slots), "waiting": len(self._queue),
                "slots": self.max_batch, "steps": self.steps, **{k: round(v, 3) for k, v in self.timers.items()}}

    def _free(self, slot: int, reason: Optional[str]):
        h = self._slots[slot]
        self._slots[slot] = None
        if h is None:
            return
        h.finish_reason = reason
        h.finished_at = time.perf_counter()
        if h.cancelled:
            self.timers["cancelled"] += 1
        else:
            self._flush(h, final=True)
            h.on_event("done", h)

    def _admit(self):
        while True:
            with self._cv:
                free = [i for i, h in enumerate(self._slots) if h is None]
                left = [h for h in self._queue if h.cancelled]  # clients that left while waiting
                if left:
                    self._queue = collections.deque(h for h in self._queue if not h.cancelled)
                    for h in left:
                        h.finish_reason, h.finished_at = "cancelled", time.perf_counter()
                    self.timers["cancelled"] += len(left)
                if not free or not self._queue:
                    return
                h = self._queue.popleft()
            slot = free[0]
            try:
                self._prefill(h, slot)
            except Exception as e:  # a prompt the model cannot take fails alone
                log.exception("prefill failed")
                if self._state is None or any(x.is_deleted() for x in jax.tree_util.tree_leaves(self._state)):
                    raise
                h.on_event("error", e)
                continue
            h.slot = slot
            self._slots[slot] = h

    def _run(self):
        try:
            while True:
                with self._cv:
                    while not self._stop and not self._queue and all(h is None for h in self._slots):
                        self._cv.wait()
                    if self._stop:
                        return
                for i, h in enumerate(self._slots):
                    if h is not None and h.cancelled:
                        self._free(i, "cancelled")
                self._admit()
                active_rows = [h is not None for h in self._slots]
                if not any(active_rows):
                    continue
                t0 = time.perf_counter()
                self._state, tok = self._step(self.model.params, self._state, np.asarray(active_rows))
                tok = np.asarray(tok)  # (B, decode_steps)
                self.steps += tok.shape[1]
                now = time.perf_counter()
                self.timers["step_s"] += now - t0
                for i, h in enumerate(self._slots):
                    if h is None:
                        continue
                    if h.first_token_at is None:
                        h.first_token_at = now
                    for t in tok[i].tolist():
                        h.ids.append(t)
                        if t in self.eos:
                            self._free(i, "stop")
                            break
                        if len(h.ids) >= h.params.max_tokens:
                            self._flush(h)
                            self._free(i, h.finish_reason or "length")
                            break
                    else:
                        if self._flush(h):
                            self._free(i, "stop")
                self.timers["host_s"] += time.perf_counter() - now
        except BaseException as e:  # the engine is dead: tell every waiting request
            log.exception("engine loop failed")
            self.error = e
            with self._cv:
                pending = [h for h in self._slots if h is not None] + list(self._queue)
                self._queue.clear()
                self._slots = [None] * self.max_batch
            for h in pending:
                h.on_event("error", e)

    def _flush(self, h: Handle, final: bool = False) -> bool:
        """Send the new text of `h`; True when a stop string ended it. The answer is what `model.chat`
        returns, the decoded tokens stripped, so leading whitespace, trailing whitespace and an unfinished
        multi-byte character wait until text follows them (or the end); text that could be the start of a
        stop string waits too."""
        ids = [t for t in h.ids if t not in self.eos]
        with self.tokenizer_lock:
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text = text.lstrip()
        stopped = False
        for s in h.params.stop:
            at = text.find(s)
            if at >= 0:
                text, stopped, final = text[:at], True, True
        if final:
            safe = text.strip()
        else:
            safe = text
            while safe and (safe[-1] == "\ufffd" or safe[-1].isspace()):
                safe = safe[:-1]
            hold = max((len(s) - 1 for s in h.params.stop), default=0)
            for k in range(min(hold, len(safe)), 0, -1):  # a tail that may begin a stop string
                if any(s.startswith(safe[-k:]) for s in h.params.stop):
                    safe = safe[:-k]
                    break
        if final:
            h.answer = safe
        if not safe.startswith(h.text):
            if final:
                log.warning("request %s: the streamed text differs from the final answer", id(h))
            return stopped  # the decoded prefix changed under us (a multi-byte character): wait
        if len(safe) > len(h.text):
            piece = safe[len(h.text):]
            h.text = safe
            if not h.cancelled and h.stream:
                h.on_event("text", piece)
        if stopped:
            h.finish_reason = "stop"
        return stopped
