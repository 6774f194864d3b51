"""Can the demo's decoder bind an object's colour to its shape, from scratch, in the demo's budget?

    python -m benchmarks.demo_binding --out /tmp/binding conj pair features:1:0 features:0.2:1

Not a speed benchmark: a probe of where the demo's spatial answers are lost (docs/demo_findings.md).
Each run trains the demo's decoder (`DEMO_DECODER`: 2 layers, 64 wide, from its init) on one question
per row about a "clip" of 45 media tokens holding 1 to 3 objects (distinct colours and shapes, four
tokens each, the rest background), "What shape is the <colour> one?" or "What colour is the <shape>?",
AdamW at the demo's learning rate and schedule, then scores 3000 held-out rows (accuracy by object
count: with two or three objects only a model that binds the attributes beats 1/2 or 1/3). The media
tokens are, by run:

    conj                  one learned embedding per (colour, shape) pair: each token carries both
    pair                  colour and shape in alternate tokens of the object (binding across tokens)
    features:ID:SHARED[:NOISE]
                          fixed continuous features, as a frozen tower hands on, through a trainable
                          mlp2x_gelu projector: a random vector per (colour, shape) pair times ID, plus
                          one vector shared by every token times SHARED, plus Gaussian noise (B, 45, 64)

Shapes: media (B, 45, 64) -> projector (B, 45, 64); question ids (B, 8) -> embeddings (B, 8, 64);
decoder over (B, 53, 64); the loss at the question's last position.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List

import numpy as np

COLOURS, SHAPES, MEDIA, DIM = 4, 3, 45, 64
OBJECT_TOKENS, SLOT = 4, 5  # each object fills 4 tokens of its own slot of 5
# Question ids: 0 padding, 1 background token, 2.. the (colour, shape) pairs; then the words.
BACKGROUND, PAIRS = 1, 2
COLOUR_WORDS, SHAPE_WORDS = PAIRS + COLOURS * SHAPES, PAIRS + COLOURS * SHAPES + COLOURS
WHAT, SHAPE_Q, COLOUR_Q, IS, THE, ONE, MARK, ANSWER = range(SHAPE_WORDS + SHAPES, SHAPE_WORDS + SHAPES + 8)
QUESTION = 8


def parse_run(text: str) -> dict:
    kind, *rest = text.split(":")
    if kind in ("conj", "pair") and not rest:
        return {"name": text, "tokens": kind}
    if kind == "features" and len(rest) in (2, 3):
        nums = [float(v) for v in rest] + [0.0] * (3 - len(rest))
        return {"name": text, "tokens": kind, "identity": nums[0], "shared": nums[1], "noise": nums[2]}
    raise ValueError(f"run {text!r}: expected conj, pair or features:ID:SHARED[:NOISE]")


def sample_rows(run: dict, n: int, rng: np.random.Generator, table: np.ndarray) -> Dict[str, np.ndarray]:
    """n rows: media ids (n, 45) and features (n, 45, 64), question ids (n, 8), answer (n,), objects (n,)."""
    ids = np.full((n, MEDIA), BACKGROUND, np.int32)
    feats = np.zeros((n, MEDIA, DIM), np.float32)
    question = np.zeros((n, QUESTION), np.int32)
    answer, objects, last = (np.zeros((n,), np.int32) for _ in range(3))
    for r in range(n):
        k = int(rng.integers(1, 4))
        colours, shapes = rng.permutation(COLOURS)[:k], rng.permutation(SHAPES)[:k]
        for c, s, slot in zip(colours, shapes, rng.permutation(MEDIA // SLOT)[:k]):
            for j in range(OBJECT_TOKENS):
                p = slot * SLOT + j
                if run["tokens"] == "pair":
                    ids[r, p] = COLOUR_WORDS + c if j % 2 == 0 else SHAPE_WORDS + s
                else:
                    ids[r, p] = PAIRS + c * SHAPES + s
        i = int(rng.integers(k))
        if rng.random() < 0.5:
            q = [WHAT, SHAPE_Q, IS, THE, COLOUR_WORDS + colours[i], ONE, MARK, ANSWER]
            answer[r] = SHAPE_WORDS + shapes[i]
        else:
            q = [WHAT, COLOUR_Q, IS, THE, SHAPE_WORDS + shapes[i], MARK, ANSWER]
            answer[r] = COLOUR_WORDS + colours[i]
        question[r, :len(q)], last[r], objects[r] = q, len(q) - 1, k
    if run["tokens"] == "features":
        feats = table[ids] + run["noise"] * rng.standard_normal(feats.shape).astype(np.float32)
    return {"ids": ids, "features": feats, "question": question, "last": last, "answer": answer, "objects": objects}


def train_and_score(run: dict, steps: int, batch: int, seed: int = 0) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from vllama_jax.config import DEMO_DECODER
    from vllama_jax.models.connectors import MLPProjector
    from vllama_jax.models.decoder import Decoder

    cfg = DEMO_DECODER
    r = np.random.default_rng(seed + 1)
    table = np.zeros((COLOUR_WORDS, DIM), np.float32)  # features of the media ids (features runs)
    if run["tokens"] == "features":
        table[PAIRS:] = run["identity"] * r.standard_normal((COLOURS * SHAPES, DIM))
        table[BACKGROUND:] += run["shared"] * r.standard_normal(DIM)

    class Model(nn.Module):
        @nn.compact
        def __call__(self, rows):
            decoder = Decoder(cfg, name="decoder")
            if run["tokens"] == "features":
                media = MLPProjector(2, cfg.hidden_size, name="projector")(rows["features"])
            else:
                media = decoder.embed(rows["ids"])
            x = jnp.concatenate([media, decoder.embed(rows["question"])], axis=1)
            logits, _ = decoder(inputs_embeds=x)
            return logits[jnp.arange(x.shape[0]), MEDIA + rows["last"]]

    model = Model()
    rng = np.random.default_rng(seed)
    params = model.init(jax.random.PRNGKey(seed), sample_rows(run, batch, rng, table))["params"]
    # The demo's optimizer (launch/configs/demo_video.yaml): AdamW 1e-3, 10 % warmup, cosine, decay 0.1.
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-3, max(1, steps // 10), steps), weight_decay=0.1)
    state = opt.init(params)

    def loss_fn(p, rows):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, rows), rows["answer"]).mean()

    @jax.jit
    def step(p, s, rows):
        loss, grads = jax.value_and_grad(loss_fn)(p, rows)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    start = time.perf_counter()
    for _ in range(steps):
        rows = sample_rows(run, batch, rng, table)
        params, state, loss = step(params, state, {k: v for k, v in rows.items() if k != "objects"})
    held = sample_rows(run, 3000, np.random.default_rng(seed + 10_000), table)
    right = np.asarray(jax.jit(model.apply)({"params": params}, held)).argmax(-1) == held["answer"]
    shape_q = held["answer"] >= SHAPE_WORDS
    return {**run, "steps": steps, "batch": batch, "loss": round(float(loss), 4), "accuracy": round(float(right.mean()), 3),
            **{f"objects{k}": round(float(right[held["objects"] == k].mean()), 3) for k in (1, 2, 3)},
            "shape_questions": round(float(right[shape_q].mean()), 3),
            "colour_questions": round(float(right[~shape_q].mean()), 3),
            "train_s": round(time.perf_counter() - start, 1)}


def main(argv=None) -> List[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="conj | pair | features:ID:SHARED[:NOISE]")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=600, help="the demo's video phase is 450 (+ 450 joint)")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)
    runs = [parse_run(r) for r in args.runs]
    os.makedirs(args.out, exist_ok=True)
    results = []
    for run in runs:
        results.append(train_and_score(run, args.steps, args.batch))
        print(json.dumps(results[-1]), flush=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
