"""`vllama-jax demo --out DIR`: the embedded end-to-end job, synthetic audio-visual QA, fully offline.

1. Generate real media (data_pipelines/synthetic.py): mp4 clips of a coloured square with a tone whose
   pitch goes with the colour, wav files, jpgs, and annotation files in the original's format.
2. Build a tokenizer on that text and a tiny audio-visual VideoLLaMA 2 (Qwen2 decoder, CLIP tower, STC
   connector, BEATs), and write it as a checkpoint in the release layout (checkpoints/export.py).
3. Load it back with `vllama_jax.load` and ask questions about every clip, batched (`answer`), audio and
   video together (`--av` style), and one streamed `chat`.
4. Write DIR/results.json: the answers against the expected ones, timings (load, compile, per batch).

The model's weights are random (training is `vllama-jax train`, see launch/), so the answers are not
meant to be right: the job shows every stage running on real files, end to end.
"""
import json
import logging
import os
import time

HELP = "run the embedded end-to-end job (synthetic audio-visual QA) and write DIR/results.json"
log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-samples", type=int, default=8, help="synthetic samples to generate")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)


def build_tokenizer(texts, vocab_size: int = 400):
    """A small byte-level BPE tokenizer trained on `texts`, with <unk> <s> </s> = 0, 1, 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def make_checkpoint(folder: str, texts, seed: int = 0):
    """A tiny random audio-visual VideoLLaMA 2 in the release layout, with its tokenizer."""
    import dataclasses

    import jax
    import flax.linen as nn

    from vllama_jax.checkpoints.export import save_videollama2
    from vllama_jax.config import PRESETS
    from vllama_jax.models.sequence import dummy_batch
    from vllama_jax.models.videollama2 import VideoLLaMA2

    tokenizer = build_tokenizer(texts)
    base = PRESETS["tiny-av-qwen2"]
    cfg = dataclasses.replace(base, decoder=dataclasses.replace(
        base.decoder, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
        max_position_embeddings=4096), num_frames=4)  # 30 s of audio alone is 1496 BEATs tokens
    params = nn.unbox(jax.jit(VideoLLaMA2(cfg).init)(jax.random.PRNGKey(seed), dummy_batch(cfg))["params"])
    save_videollama2(folder, cfg, params, tokenizer)
    return folder


def main(args) -> int:
    import numpy as np

    import vllama_jax
    from data_pipelines.synthetic import make_dataset
    from vllama_jax.answering import answer_rows

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    timings = {}

    t = time.perf_counter()
    data = make_dataset(os.path.join(out, "data"), num_samples=args.num_samples, audio=True)
    with open(os.path.join(data, "train.json")) as f:
        rows = json.load(f)
    with open(os.path.join(data, "av.json")) as f:
        av_rows = json.load(f)
    timings["make_data_s"] = time.perf_counter() - t

    texts = [turn["value"] for r in rows + av_rows for turn in r["conversations"]]
    t = time.perf_counter()
    ckpt = make_checkpoint(os.path.join(out, "checkpoint"), texts, args.seed)
    timings["make_checkpoint_s"] = time.perf_counter() - t

    t = time.perf_counter()
    model = vllama_jax.load(ckpt)
    timings["load_s"] = time.perf_counter() - t

    questions = []
    for i, r in enumerate(rows + [dict(r, av=True) for r in av_rows]):
        q, a = r["conversations"][0]["value"], r["conversations"][1]["value"]
        q = q.replace("<video>", "").replace("<image>", "").replace("<audio>", "").strip()
        item = {"id": i, "question": q, "expected": a, "av": bool(r.get("av"))}
        for k in ("video", "image", "audio"):
            if r.get(k):
                item[k] = os.path.join(data, r[k])
        questions.append(item)

    results = []
    t = time.perf_counter()
    answer_rows(model, questions, batch_size=4, max_new_tokens=args.max_new_tokens, on_result=results.append)
    timings["answer_all_s"] = time.perf_counter() - t
    expected = {q["id"]: q for q in questions}
    for r in results:
        q = expected[r["id"]]
        r.update(expected=q["expected"], media={k: os.path.relpath(q[k], out) for k in ("video", "image", "audio")
                                                  if k in q}, av=q["av"])

    video = next(q["video"] for q in questions if "video" in q)
    streamed = []
    t = time.perf_counter()
    answer = model.chat("What do you see and hear?", video=video, audio=True, max_new_tokens=args.max_new_tokens,
                        stream=streamed.append)
    timings["chat_s"] = time.perf_counter() - t

    summary = {
        "job": "synthetic audio-visual QA (random tiny model: the answers are not expected to be right)",
        "checkpoint": os.path.relpath(ckpt, out),
        "questions": len(questions),
        "answered": sum("answer" in r for r in results),
        "errors": sum("error" in r for r in results),
        "exact_match": float(np.mean([r.get("answer") == r["expected"] for r in results])) if results else 0.0,
        "chat": {"question": "What do you see and hear?", "video": os.path.relpath(video, out), "answer": answer,
                 "streamed_pieces": len(streamed)},
        "timings": timings,
        "results": sorted(results, key=lambda r: r["id"]),
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"{summary['answered']} / {summary['questions']} questions answered ({summary['errors']} errors); "
          f"results in {os.path.join(out, 'results.json')}")
    return 0 if summary["errors"] == 0 and summary["answered"] == len(questions) else 1
