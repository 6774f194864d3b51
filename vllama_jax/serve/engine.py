"""The continuous-batching decode loop: a fixed set of KV-cache slots, one compiled step for all of them.

    engine = Engine(model, max_batch=8, max_len=2048)
    engine.start()
    handle = engine.submit(prompt, params, on_event)    # from any thread; on_event(kind, payload)
    engine.cancel(handle)                               # a disconnected client: its slot is freed at once

Device state (static shapes: compiled once for the step, once per prompt shape and group size for the
prefill, the group sizes in the background):

    cache      {"k", "v"}: (layers, B, S, KVH, hd)   B = max_batch slots, S = max_len (models/decoder.py)
    key_mask   (B, S) bool      which slots of each row hold real tokens
    logits     (B, V) float32   each row's next-token logits
    pos        (B,) int32       each row's next position = its next write slot (prompts start at slot 0)
    keys       (B, 2) uint32    each row's PRNG key, split once per step as generate.py does
    temperature, top_p (B,) float32; top_k (B,) int32: each row's sampling parameters

A request's prompt (B=1, text padded to a length bucket, media spliced by `VideoLLaMA2.prepare_inputs`)
is prefilled into its free slot between two steps: its real tokens are moved to the front (slots
[0, n), positions 0..n-1), so positions equal slots and the slot's write offset is n. Prompts waiting
together are prefilled together: the oldest waiting request and the later ones whose model batch has
its shapes (text length bucket, media keys and shapes), at most one per free slot, go in one compiled
call, their B=1 batches stacked into rows (`_admit`). The group is padded to the next of `group_sizes`
(powers of two up to max_batch) so that a prompt shape compiles at most len(group_sizes) prefills; a
padding row repeats the first row's batch and carries the slot index max_batch, past the last row, so
its writes are dropped (each row's cache, logits, pos, key and sampling parameters are scattered into
its own slot; the slots need not be contiguous). Requests of other shapes wait for the next call; as
the oldest waiting request is always in the group, none waits behind later ones for long. If a group's
call fails, its requests are prefilled one at a time, so a prompt the model cannot take fails alone.
`timers` counts both: "prefills" requests prefilled, "prefill_calls" compiled calls made. Then every
step samples one token per row from `logits` and runs the decoder on them with a per-row write slot
(layers/attention.py), so rows of different lengths advance together. A row stops at EOS, at its
`max_tokens`, at a stop string or when its client goes away, and its slot is free for the next prompt
at once. The host reads the (B,) tokens after each step, detokenizes and hands text to the waiting
requests; nothing waits for another request's whole generation. With `decode_steps` k > 1 one compiled
call runs k such steps (tokens (B, k)), and requests join and leave every k tokens.

Compiles (no compile but the B=1 prefill's holds up traffic): the first request of a new prompt shape
compiles its B=1 prefill on the engine thread, a jitted call (the loop waits for it, as it always has); then
the shape's other group sizes go to a background compiler (`_Compiler`: one daemon thread, smallest size
first), which lowers `_prefill_fn` from shapes alone (jax.ShapeDtypeStruct of the batch and of the state,
the model's params, which are never donated) and keeps the executable per (shape, size) under a lock: it
never reads the donated state, and only the engine thread calls the executables. The state's shapes carry
a sharding only where the state is committed to one, so an executable returns the state as the jitted
calls do (a committed one would make the step and the B=1 prefill compile again). Until a size is
compiled, `_admit` makes groups of the sizes that are: a group is cut to the largest compiled size that
holds it (1 at first), its later requests stay at the head of the queue and go in the next call of the
same round, so 5 waiting requests with sizes {1, 2} ready go as 2 + 2 + 1, oldest first. `engine.stop()`
drops the compiles not started and does not wait for one under way; `wait_compiled(timeout)` waits for
the background compiler (tests, benchmarks). `warmup(prompts, group_sizes=engine.group_sizes)` compiles
every size of those prompts' shapes before serving; with the default (1,) only the B=1 prefill, the rest
in the background. timers "compiles" counts the prefills compiled on the engine thread,
"background_compiles" / "background_compile_s" those compiled beside it. Most of such a compile of a
small model is tracing and lowering, in Python under the GIL, so while one runs the interpreter's GIL
switch interval is 0.5 ms instead of 5 (BACKGROUND_SWITCH_INTERVAL_S): the threads serving traffic wait
less for the GIL (on 2 CPUs, 5 ms halved the throughput while a compile ran).

Sampling per row is generate.py's (temperature, then top-k, then top-p, then a categorical draw with
the row's key), so greedy and seeded answers equal `model.chat`'s for the same prompt.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import logging
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

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
        # The prompt's B=1 model batch (`Engine.prefill_batch`), built by the engine thread when it first
        # looks at the request while it waits, and dropped once it is prefilled.
        self.batch: Optional[dict] = None


@functools.lru_cache(maxsize=4096)
def _prng_key(seed: int) -> np.ndarray:
    """`jax.random.PRNGKey(seed)` as model.chat makes it, computed once per seed (greedy requests share 0)."""
    key = np.asarray(jax.random.PRNGKey(seed))
    key.setflags(write=False)
    return key


def _bucket(n: int, size: int) -> int:
    return -(-n // size) * size


def _shape_key(batch: dict) -> tuple:
    """What a compiled prefill depends on: each array's name, shape and dtype."""
    return tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items()))


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


# The interpreter's GIL switch interval while a background compile runs (restored when none does). Most of
# a compile of a small model is Python (tracing, lowering) holding the GIL; at the default 5 ms every thread
# that serves traffic waits up to that long each time it takes the GIL back (the engine thread does so
# several times a step), which on 2 CPUs halved the throughput while a compile ran.
BACKGROUND_SWITCH_INTERVAL_S = 0.0005
_switch_lock = threading.Lock()
_switch_users = [0, None]  # compiles running in the process, the interval to restore


def _switch_interval(enter: bool):
    with _switch_lock:
        if enter:
            if _switch_users[0] == 0:
                _switch_users[1] = sys.getswitchinterval()
                sys.setswitchinterval(min(_switch_users[1], BACKGROUND_SWITCH_INTERVAL_S))
            _switch_users[0] += 1
        else:
            _switch_users[0] -= 1
            if _switch_users[0] == 0:
                sys.setswitchinterval(_switch_users[1])


class _Compiler:
    """One daemon thread running compile jobs one at a time, in the order submitted. It is started by the
    first job. `stop` drops the jobs not started and returns at once: a compile under way finishes on its
    own (a daemon thread: neither `Engine.stop` nor the interpreter's exit waits for it). While a job runs,
    the GIL switch interval is BACKGROUND_SWITCH_INTERVAL_S, so the threads serving traffic get it back soon."""

    def __init__(self, name: str = "vllama-compile"):
        self.name = name
        self.thread: Optional[threading.Thread] = None
        self._jobs: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._busy = False
        self._stopped = False

    def submit(self, job: Callable[[], None]) -> bool:
        with self._cv:
            if self._stopped:
                return False
            self._jobs.append(job)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.thread.start()
            self._cv.notify_all()
        return True

    def _run(self):
        while True:
            with self._cv:
                while not self._jobs and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                job = self._jobs.popleft()
                self._busy = True
            _switch_interval(True)
            try:
                job()
            except Exception:  # that size stays uncompiled: groups use the sizes that are
                log.exception("a background compile failed")
            finally:
                _switch_interval(False)
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until no job is waiting or running (after `stop`: none running); False at `timeout` s."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._busy and (self._stopped or not self._jobs), timeout)

    def stop(self):
        with self._cv:
            self._stopped = True
            self._jobs.clear()
            self._cv.notify_all()


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
        # Where the loop's time goes, and how many requests left before their end (client gone). "prefills"
        # counts requests, "prefill_calls" the compiled calls that prefilled them (several per call).
        # "compiles": prefill programs compiled on the engine thread (the B=1 one of each new prompt shape;
        # traffic waits for these), "background_compiles" / "background_compile_s": group sizes compiled
        # beside it (nothing waits for them).
        self.timers = {"prefill_s": 0.0, "step_s": 0.0, "host_s": 0.0, "prefills": 0, "prefill_calls": 0,
                       "cancelled": 0, "compiles": 0, "background_compiles": 0, "background_compile_s": 0.0}
        # The row counts a prefill is compiled for: 1, 2, 4, ... up to max_batch (a group is padded up to one).
        self.group_sizes = sorted({min(2 ** i, self.max_batch) for i in range(self.max_batch.bit_length() + 1)})
        # How far down the queue `_admit` looks for requests of the oldest one's shape: each one looked at
        # holds its model batch until it is prefilled, so this bounds that memory.
        self.scan_limit = 4 * self.max_batch
        self._state = None
        # The B=1 prefill of each prompt shape (`_shape_key` of its batch), compiled by its first call on the
        # engine thread, and the compiled group sizes > 1 of each shape ({size: executable}), written by the
        # background compiler (under `_exec_lock`) from shapes alone.
        self._prefills: Dict[tuple, Callable] = {}
        self._group_prefill = jax.jit(self._prefill_fn, donate_argnums=(1,))
        self._executables: Dict[tuple, Dict[int, Any]] = {}
        self._exec_lock = threading.Lock()
        self._ahead: set = set()  # shapes whose group sizes were handed to the background compiler
        self._compiler = _Compiler()
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

    def _prefill_fn(self, params, state, batch, slots, keys, temperature, top_k, top_p):
        """Prefill P prompts of one shape (batch: their B=1 batches stacked, (P, ...)) into the rows `slots`
        (P,) int32 of the state; keys (P, 2), temperature / top_k / top_p (P,). A row whose slot is
        max_batch (a padding row) writes nothing: every write is a scatter that drops indices out of range."""
        prep = self.model.module.apply({"params": params}, batch, method=VideoLLaMA2.prepare_inputs)
        embeds, mask = right_align(prep["inputs_embeds"], prep["attention_mask"])
        p, lp = mask.shape
        n = mask.sum(axis=1).astype(jnp.int32)  # (P,) real tokens of each row
        positions = jnp.broadcast_to(jnp.arange(lp, dtype=jnp.int32), (p, lp))
        small = self._cache(p, lp)
        logits, small = self._decode(params, inputs_embeds=embeds, attention_mask=mask, positions=positions,
                                     cache=small, cache_index=0)
        last = jnp.take_along_axis(logits, (n - 1)[:, None, None], axis=1)[:, 0]  # (P, V)
        keep = min(lp, self.max_len)
        if isinstance(small, list):  # one (B, S, KVH, hd) pair per layer
            cache = [{name: big[name].at[slots, :keep].set(one[name][:, :keep], mode="drop")
                      for name in ("k", "v")} for big, one in zip(state["cache"], small)]
        else:  # stacked (layers, B, S, KVH, hd)
            cache = {name: state["cache"][name].at[:, slots, :keep].set(small[name][:, :, :keep], mode="drop")
                     for name in ("k", "v")}
        row_mask = jnp.arange(self.max_len)[None] < n[:, None]  # (P, S): the whole row, old tokens masked out
        put = lambda x, rows: x.at[slots].set(rows.astype(x.dtype), mode="drop")
        return dict(state, cache=cache, key_mask=put(state["key_mask"], row_mask), logits=put(state["logits"], last),
                    pos=put(state["pos"], n), keys=put(state["keys"], keys),
                    temperature=put(state["temperature"], temperature), top_k=put(state["top_k"], top_k),
                    top_p=put(state["top_p"], top_p))

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

    def _batch_of(self, h: Handle) -> dict:
        if h.batch is None:
            h.batch = self.prefill_batch(h.prompt)
        return h.batch

    def ready_sizes(self, key: tuple) -> List[int]:
        """The group sizes prompts of shape `key` (`_shape_key` of a B=1 batch) can be prefilled in now,
        ascending: 1 (the B=1 prefill, compiled on the engine thread by its first call) and those the
        background compiler (or `warmup`) has compiled."""
        with self._exec_lock:
            return [1] + sorted(self._executables.get(key, ()))

    def _rows_for(self, key: tuple, n: int) -> int:
        """How many of n waiting requests of shape `key` one call takes: all of them if a compiled size holds
        them (the call is padded up to it), else as many as the largest compiled size (the rest wait)."""
        largest = self.ready_sizes(key)[-1]
        return n if largest >= n else largest

    def _spec_of_state(self):
        """The state's shapes, dtypes and shardings (the same after every call), read on the engine thread. A
        sharding only where the array is committed to it: an executable compiled for a committed state
        returns a committed one, and the jitted step and B=1 prefill would compile again for that."""
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding if x.committed else None),
            self._state)

    def _compile_group(self, key: tuple, size: int, state_spec):
        """Compile the prefill of `size` rows of shape `key` from shapes alone: it never reads the live (donated)
        state, so it may run on any thread. -> the executable, also kept in `_executables`."""
        sds = jax.ShapeDtypeStruct
        batch = {name: sds((size,) + shape[1:], np.dtype(dtype)) for name, shape, dtype in key}
        vec = lambda dtype: sds((size,), dtype)
        key0 = _prng_key(0)
        exe = self._group_prefill.lower(self.model.params, state_spec, batch, vec(np.int32),
                                        sds((size,) + key0.shape, key0.dtype), vec(np.float32), vec(np.int32),
                                        vec(np.float32)).compile()
        with self._exec_lock:
            self._executables.setdefault(key, {})[size] = exe
        return exe

    def _compile_in_background(self, key: tuple, size: int, state_spec):
        if size in self.ready_sizes(key):  # warmup compiled it already
            return
        t0 = time.perf_counter()
        self._compile_group(key, size, state_spec)
        self.timers["background_compile_s"] += time.perf_counter() - t0
        self.timers["background_compiles"] += 1

    def _compile_ahead(self, key: tuple):
        """A prompt shape's B=1 prefill has just run for the first time: hand its larger group sizes to the
        background compiler, smallest first (until each is ready, `_admit` makes groups of those that are)."""
        if key in self._ahead:
            return
        self._ahead.add(key)
        spec = self._spec_of_state()
        for g in self.group_sizes:
            if g > 1:
                self._compiler.submit(functools.partial(self._compile_in_background, key, g, spec))

    def _prefill(self, handles: List[Handle], slots: List[int], count: bool = True):
        """One compiled call: prefill handles[i] (of one shape) into slot slots[i]. One request: the B=1
        prefill (compiled here on the shape's first call). More: the smallest compiled group size that holds
        them, padded with rows that write nothing (see `_prefill_fn`); if none does, that size is compiled
        here (`_admit` never asks for one: it makes groups of compiled sizes)."""
        key = _shape_key(self._batch_of(handles[0]))
        n = len(handles)
        if n == 1:
            size, fn = 1, self._prefills.get(key)
            if fn is None:
                fn = self._prefills[key] = jax.jit(self._prefill_fn, donate_argnums=(1,))
                self.timers["compiles"] += 1
        else:
            size = next((g for g in self.ready_sizes(key) if g >= n), None)
            if size is None:
                size = next(g for g in self.group_sizes if g >= n)
                self._compile_group(key, size, self._spec_of_state())
                self.timers["compiles"] += 1
            with self._exec_lock:
                fn = self._executables[key][size]
        pad = size - n
        batches = [self._batch_of(h) for h in handles] + [self._batch_of(handles[0])] * pad
        batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        params = [h.params for h in handles] + [handles[0].params] * pad
        t0 = time.perf_counter()
        self._state = fn(
            self.model.params, self._state, batch, np.array(list(slots) + [self.max_batch] * pad, np.int32),
            np.stack([_prng_key(p.seed) for p in params]), np.array([p.temperature for p in params], np.float32),
            np.array([p.top_k for p in params], np.int32), np.array([p.top_p for p in params], np.float32))
        jax.block_until_ready(self._state["pos"])
        if count:
            self.timers["prefill_s"] += time.perf_counter() - t0
            self.timers["prefills"] += n
            self.timers["prefill_calls"] += 1
        if size == 1:
            self._compile_ahead(key)

    def warmup(self, prompts: Sequence[Prompt] = (), group_sizes: Sequence[int] = (1,)):
        """Compile the step, and the prefill of each given prompt's shape for each of `group_sizes` (each at
        most max_batch; `self.group_sizes`: every prefill a prompt of that shape can need), before serving.
        The B=1 prefill runs once, into no slot (its row writes nothing), and hands the shape's other group
        sizes to the background compiler; the larger sizes asked for compile here, first. The timers do not
        count these calls."""
        if self._state is None:
            self._state = self._init_state()
        for pr in prompts:
            h = Handle(pr, SamplingParams(max_tokens=1), lambda *a: None)
            key = _shape_key(self._batch_of(h))
            for g in sorted(set(group_sizes) - {1}):
                if g not in self.ready_sizes(key):
                    self._compile_group(key, g, self._spec_of_state())
                    self.timers["compiles"] += 1
            if 1 in group_sizes:
                self._prefill([h], [self.max_batch], count=False)
        self._state, tok = self._step(self.model.params, self._state, jnp.zeros((self.max_batch,), bool))
        np.asarray(tok)

    def wait_compiled(self, timeout: Optional[float] = None) -> bool:
        """Block until the background compiler has nothing left to do (False at `timeout` s)."""
        return self._compiler.wait(timeout)

    # --- host side ---------------------------------------------------------------------------------------
    def start(self):
        if self._state is None:
            self._state = self._init_state()
        self._thread = threading.Thread(target=self._run, name="vllama-engine", daemon=True)
        self._thread.start()

    def stop(self):
        """Stop the loop (waits for it, at most 30 s) and the background compiler (does not wait for it:
        the jobs not started are dropped, one under way ends on its own in its daemon thread)."""
        self._compiler.stop()
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
        """Prefill waiting requests into the free slots, a group of one shape per compiled call (the module doc)."""
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
                # Only this thread takes requests out of the queue (submit appends): these stay its head.
                waiting = list(itertools.islice(self._queue, self.scan_limit))
            group, failed = self._pick_group(waiting, len(free))  # builds model batches: outside the lock
            if len(group) > 1:  # as many as a compiled size holds; the rest stay first in the queue
                group = group[:self._rows_for(_shape_key(group[0].batch), len(group))]
            with self._cv:
                taken = {id(h) for h in group} | {id(h) for h, _ in failed}
                self._queue = collections.deque(h for h in self._queue if id(h) not in taken)
            for h, e in failed:
                h.on_event("error", e)
            self._prefill_group(group, free[:len(group)])

    def _pick_group(self, waiting: List[Handle], room: int):
        """The oldest of `waiting` and the later ones whose model batch has its shapes, at most `room` ->
        (group, [(handle, error)] of those whose batch cannot be built: they fail alone)."""
        group, failed, shape = [], [], None
        for h in waiting:
            if len(group) == room:
                break
            if h.cancelled:  # left for the next round to count
                continue
            try:
                key = _shape_key(self._batch_of(h))
            except Exception as e:
                log.exception("a request's model batch cannot be built")
                failed.append((h, e))
                continue
            if shape is None:
                shape = key
            if key == shape:
                group.append(h)
        return group, failed

    def _prefill_group(self, group: List[Handle], slots: List[int]):
        """Prefill `group` into `slots` in one call; if it fails, one request at a time, so that a prompt the
        model cannot take fails alone."""
        if not group:
            return
        try:
            self._prefill(group, slots)
        except Exception as e:
            log.exception("prefill of %d requests failed", len(group))
            if self._state is None or any(x.is_deleted() for x in jax.tree_util.tree_leaves(self._state)):
                for h in group:  # the donated state is gone: the engine stops, and these fail with it
                    h.on_event("error", e)
                raise
            if len(group) == 1:
                group[0].on_event("error", e)
            else:
                for h, slot in zip(group, slots):
                    self._prefill_group([h], [slot])
            return
        for h, slot in zip(group, slots):
            h.slot, h.batch = slot, None
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
