"""The side-by-side bench behind `vllama-jax bench --out DIR [--quick]`: our JAX models against the
PyTorch reference (transformers), same checkpoint, same inputs, same process, same machine.

    run(out_dir, quick=False, warmup=None, repeats=None, only=None, decode_sizes=None) -> report dict
        writes out_dir/bench.json and out_dir/bench.png (see report.py) and prints a table.

Cases (cases.py): decoder prefill (Mistral and Qwen2 at batch 1 and 4 x 128 and 512 tokens), greedy
generation (32 new tokens after a 128-token prompt), the CLIP vision tower on 8 frames, decode at real
sizes (4 x 256, 374M, 1B Qwen2 decoders; batch 1 and 8; float32 and int8 weights; memory-bandwidth
fraction), and the whole model (CLIP tower, STC connector, Qwen2 decoder) on a 16-frame video prompt:
its prefill and one fine-tune train step, against a PyTorch VideoLLaMA 2 of transformers' and timm's
parts (torch_reference.py).
`quick` uses the smallest sizes (for the test suite, a few seconds per case).

Also runnable as a script from a checkout: `python benchmarks/run_bench.py --out DIR [--quick]`.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from typing import Optional, Sequence

from vllama_jax import cli

from benchmarks import report
from benchmarks.timing import environment

KINDS = ("prefill", "generate", "vision", "decode", "video", "train")


def _torch_device() -> str:
    """PyTorch runs where JAX runs: on the GPU when JAX has one and this torch build can use it."""
    import jax
    import torch

    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def run(out_dir: str, quick: bool = False, warmup: Optional[int] = None, repeats: Optional[int] = None,
        only: Optional[Sequence[str]] = None, log=print, decode_sizes: Optional[Sequence[str]] = None) -> dict:
    import jax

    from benchmarks import cases  # local: cases imports torch at the top (a test extra)

    sizes = cases.QUICK if quick else cases.FULL
    if decode_sizes:
        known = [d.name for d in sizes.decode]
        unknown = set(decode_sizes) - set(known)
        if unknown:
            raise ValueError(f"unknown decode sizes {sorted(unknown)}: expected some of {', '.join(known)}")
        sizes = dataclasses.replace(sizes, decode=tuple(d for d in sizes.decode if d.name in decode_sizes))
    kinds = tuple(only or KINDS)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown case kind '{k}': expected some of {', '.join(KINDS)}")
    runner = cases.Runner(warmup=1 if warmup is None else warmup,
                          repeats=(3 if quick else 5) if repeats is None else repeats,
                          torch_device=_torch_device())
    if runner.repeats < 1:
        raise ValueError("repeats must be at least 1")
    if runner.torch_device == "cuda":  # float32 means float32 on both sides: no TF32 in PyTorch either
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    results = []

    def record(row):
        results.append(row)
        log(f"  {row['name']:<30} ratio {row['ratio']:.2f}  (jax {1e3 * row['jax']['median_s']:.2f} ms, "
            f"torch {1e3 * row['torch']['median_s']:.2f} ms)")

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    # Float32 matmuls on every backend (a GPU would otherwise use TF32 for JAX's and not for PyTorch's).
    with jax.default_matmul_precision("highest"), cases.quiet_transformers(), tempfile.TemporaryDirectory() as tmp:
        if {"prefill", "generate"} & set(kinds):
            for cfg in sizes.decoders:
                log(f"{cfg.family}: hidden {cfg.hidden_size}, {cfg.num_layers} layers, vocab {cfg.vocab_size}")
                hf, ours = cases.decoder_pair(cfg, os.path.join(tmp, cfg.family), runner)
                if "prefill" in kinds:
                    for batch, seq in sizes.prefill_shapes:
                        record(cases.prefill(hf, ours, batch, seq, runner))
                if "generate" in kinds and cfg.family in sizes.generate_families:
                    for batch in sizes.generate_batches:
                        record(cases.generate(hf, ours, batch, sizes.prompt_len, sizes.new_tokens, runner))
                del hf, ours
        if "decode" in kinds:
            import gc
            for size in sizes.decode:
                cfg = size.config
                log(f"decode {size.name}: hidden {cfg.hidden_size}, {cfg.num_layers} layers, vocab {cfg.vocab_size}")
                hf, ours = cases.decoder_pair(cfg, os.path.join(tmp, "decode_" + size.name), runner)
                ours_int8 = cases.int8_part(ours)
                for batch in sizes.decode_batches:
                    record(cases.decode(hf, ours, ours_int8, size.name, batch, sizes.decode_prompt_len,
                                        sizes.decode_new_tokens, runner))
                del hf, ours, ours_int8
                gc.collect()
        if "vision" in kinds:
            v = sizes.vision
            log(f"clip: {v.image_size}px, hidden {v.hidden_size}, {v.num_layers} layers")
            hf, ours = cases.vision_pair(v, os.path.join(tmp, "clip"), runner)
            record(cases.vision(hf, ours, sizes.frames, runner))
        if {"video", "train"} & set(kinds):
            c = sizes.video
            log(f"whole model: {c.num_frames} frames of {c.vision.image_size}px, CLIP hidden {c.vision.hidden_size} x "
                f"{c.vision.num_layers}, {c.connector.type}, decoder hidden {c.decoder.hidden_size} x "
                f"{c.decoder.num_layers}")
            pair = cases.video_pair(c, runner)
            if "video" in kinds:
                record(cases.video_prefill(pair, sizes.video_batch, sizes.video_text, runner))
            if "train" in kinds:  # last: it updates the pair's weights
                record(cases.train_step(pair, sizes.train_batch, sizes.video_text, runner))

    result = {
        # Other processes on the machine move the figures: the load average says whether there were any.
        "env": {**environment(runner.torch_device), "load_average_1min": {
            "before": load_before, "after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}},
        "settings": {"quick": quick, "dtype": "float32", "matmul_precision": "highest", "warmup": runner.warmup,
                     "repeats": runner.repeats, "kinds": list(kinds), "wall_s": time.perf_counter() - t0,
                     "sizes": _sizes_json(sizes)},
        "results": results,
    }
    result["summary"] = report.summary(results)
    paths = report.write_all(result, out_dir)
    log(report.table(result))
    log(f"wrote {paths['json']} and {paths['png']}")
    return result


def _sizes_json(sizes) -> dict:
    d = dataclasses.asdict(sizes)
    d["decoders"] = [c.to_hf_config() for c in sizes.decoders]
    d["vision"] = sizes.vision.to_hf_config()
    d["decode"] = [{"name": x.name, **x.config.to_hf_config()} for x in sizes.decode]
    return d


if __name__ == "__main__":
    sys.exit(cli.main(["bench"] + sys.argv[1:]))
