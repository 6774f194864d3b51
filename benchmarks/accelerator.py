"""Decode and train-step speed on an accelerator, in bfloat16, against the chip's own limits and PyTorch.

    python -m benchmarks.accelerator --out DIR [--quick] [--plan 7B,train,1B]

What runs (one process, one device):
  limits    the device's copy bandwidth (an elementwise pass over 2 GiB: bytes read + written / time) and
            its bfloat16 matmul rate (8192^3), measured here, next to the datasheet peak of devices.py.
  decode    greedy decode of `new_tokens` tokens after a 16-token prompt at batch 1 and 8, bfloat16 weights
            and cache, for Qwen2-shaped decoders: "1B" (18 x 2048, vocab 32000) and "7B" (Qwen2-7B: 28 x 3584,
            GQA 28 / 4 heads, MLP 18944, vocab 152064). Ours (the layers split into per-layer buffers, what
            `vllama_jax.load` holds on accelerators, and the scanned stack) against transformers' `generate`
            on the same weights on the same device. Per case:
            tokens/s, ours / PyTorch, and the fraction of the measured copy bandwidth that one pass over the
            weights per token uses (weight bytes x steps/s / bandwidth), greedy agreement.
  train     one VideoLLaMA2.1-7B-16F `video_pretrain` step (launch/configs/video_pretrain.yaml: the
            connector trains, gradients flow back through the frozen Qwen2-7B and SigLIP tower; bfloat16,
            full remat) on a random batch: step time and MFU (the FLOPs estimate of train/flops.py over
            the datasheet peak, and over the matmul rate measured here).

  layouts-SIZE  our decode alone (no PyTorch, random weights drawn on the device) in the `--layouts` given:
            "scan", "unrolled" (per-layer cache over slices of the stack), "split".

Writes DIR/accelerator.json and DIR/accelerator.png. `--quick` shrinks every size (a CPU check of the
script itself; its figures mean nothing).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vllama_jax import config as C
from vllama_jax.devices import peak_flops
from vllama_jax.loading import Part, decoder_module, decoder_params
from vllama_jax.models.decoder import fuse_projections, split_layers
from vllama_jax.models.sequence import dummy_batch, train_batch_shapes
from vllama_jax.sharding import LOGICAL_AXIS_RULES, make_mesh, shard_batch, use_mesh
from vllama_jax.train.config import load_train_config
from vllama_jax.train.loop import train_program
from vllama_jax.train.state import initial_params, new_state

from benchmarks.timing import compile_jax, environment, round_robin


def _time(fn, repeats: int = 10) -> float:
    """Median seconds of `fn()` (a jitted call) after one warm-up."""
    jax.block_until_ready(fn())
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t0)
    return float(np.median(runs))


def device_limits(quick: bool) -> dict:
    """Copy bandwidth (bytes/s, read + written) and bfloat16 matmul rate (FLOP/s) measured on device 0."""
    n = (1 << 20) if quick else (1 << 30)  # elements of bfloat16: 2 GiB read, 2 GiB written
    x = jnp.ones((n,), jnp.bfloat16)
    step = jax.jit(lambda a: a + jnp.bfloat16(1))
    copy_s = _time(lambda: step(x))
    m = 256 if quick else 8192
    a = jax.random.normal(jax.random.key(0), (m, m), jnp.bfloat16)
    mm = jax.jit(lambda p, q: p @ q)
    mm_s = _time(lambda: mm(a, a))
    x = a = None  # freed before the next measurement
    out = {"xla_elementwise_bytes_per_s": 2 * 2 * n / copy_s, "matmul_bf16_flops_per_s": 2 * m ** 3 / mm_s,
           "copy_bytes": 2 * 2 * n, "matmul_size": m}
    import torch
    if torch.cuda.is_available() and jax.default_backend() == "gpu":
        # The chip's copy engine path (cudaMemcpy device to device): the usual "achievable bandwidth".
        src = torch.empty(2 * n, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        dst.copy_(src)
        torch.cuda.synchronize()
        runs = []
        for _ in range(10):
            t0 = time.perf_counter()
            dst.copy_(src)
            torch.cuda.synchronize()
            runs.append(time.perf_counter() - t0)
        out["torch_copy_bytes_per_s"] = 2 * 2 * n / float(np.median(runs))
        del src, dst
        torch.cuda.empty_cache()
    # The better of the two is what the device can do; the decode fractions are taken against it.
    out["copy_bandwidth_bytes_per_s"] = max(out["xla_elementwise_bytes_per_s"], out.get("torch_copy_bytes_per_s", 0))
    return out


# --- decode ----------------------------------------------------------------------------------------------------

def decode_sizes(quick: bool):
    from benchmarks.cases import bench_decoder  # local: cases imports torch at the top
    if quick:
        return {"tiny": bench_decoder("qwen2", 512, 64, 2, 4, 2)}
    one_b = bench_decoder("qwen2", 32000, 2048, 18, 16, 4)
    seven_b = dataclasses.replace(bench_decoder("qwen2", 152064, 3584, 28, 28, 4), intermediate_size=18944)
    return {"1B": one_b, "7B": seven_b}


def torch_decoder(cfg, device: str, seed: int = 0):
    """A transformers Qwen2/Mistral causal LM in bfloat16 on `device`, weights ~ N(0, 1/fan_in), norms ~ 1,
    biases small (`cases.randomize_`, drawn on the device)."""
    import torch
    import transformers

    from benchmarks.cases import randomize_  # local: cases imports torch at the top
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf_config())
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa",
                                                              dtype=torch.bfloat16).eval()
    randomize_(model, seed, device)
    return model


def our_decoder(cfg, model):
    """Our loaded decoder (a `Part`) holding `model`'s weights, read through the release key map (the same
    `decoder_params` that `vllama_jax.load` uses), bfloat16."""
    import ml_dtypes
    import torch

    state = {k: v.detach().view(torch.int16).cpu().numpy().view(ml_dtypes.bfloat16)
             for k, v in model.state_dict().items()}
    module = decoder_module(cfg, dtype=jnp.bfloat16)
    params = decoder_params(cfg, state, "in-memory transformers model", module=module)
    del state
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
    return Part("decoder", cfg, module, params, "<memory>")


def layouts_case(name, cfg, batch: int, new_tokens: int, bandwidth: float, layouts, repeats: int):
    """Our decode alone (random bfloat16 weights drawn on the device, no PyTorch) in several layouts:
    "scan" (the stacked layers under nn.scan), "unrolled" (per-layer cache, slices of the stack), "split"
    (per-layer cache, each layer's weights a buffer of their own: `decoder.split_layers`)."""
    from benchmarks.cases import decode_weight_bytes, our_generate  # local: cases imports torch at the top

    module = decoder_module(cfg, dtype=jnp.bfloat16)
    part = Part("decoder", cfg, module, random_params(module), "<random>")
    nbytes = decode_weight_bytes(part)
    ids = jnp.asarray(np.random.default_rng(4).integers(3, cfg.vocab_size, (batch, 16)).astype(np.int32))
    mask = jnp.ones((batch, 16), jnp.int32)
    row = {"name": f"layouts {name} b{batch} +{new_tokens}", "size": name, "batch": batch, "weight_bytes_per_step": nbytes}
    for layout in layouts:
        if layout == "split":
            part = Part("decoder", cfg, module, fuse_projections(split_layers(part.params)), "<random>")
        fn, compile_s = compile_jax(our_generate(part, new_tokens, per_layer=layout != "scan"), part.params, ids, mask)
        jax.block_until_ready(fn(part.params, ids, mask))
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(part.params, ids, mask))
            runs.append(time.perf_counter() - t0)
        best = min(runs)
        row[layout] = {"tokens_per_s": batch * new_tokens / best, "min_s": best, "compile_s": compile_s,
                       "bandwidth_fraction": nbytes * new_tokens / best / bandwidth}
        print(json.dumps({layout: row[layout]}), flush=True)
    return row


def random_params(module):
    """`module`'s params (stacked layers), weights ~ N(0, 0.02) in bfloat16, drawn on the device."""
    import flax.linen as nn
    init = jax.jit(lambda k: jax.tree_util.tree_map(lambda a: (a * 0.02).astype(jnp.bfloat16), nn.unbox(
        module.init(k, jnp.zeros((1, 2), jnp.int32))["params"])))
    return init(jax.random.key(0))


# The stacked layers under nn.scan, and the layout `vllama_jax.load` picks on accelerators (models/decoder.py).
LAYOUTS = ("scan", "split")


def decode_case(name, cfg, hf, ours, batch: int, new_tokens: int, bandwidth: float, device: str, repeats: int):
    import torch

    from benchmarks.cases import decode_weight_bytes, our_generate  # local: cases imports torch at the top

    prompt = 16
    ids = np.random.default_rng(4).integers(3, cfg.vocab_size, (batch, prompt)).astype(np.int32)
    mask = np.ones((batch, prompt), np.int32)
    args = (jnp.asarray(ids), jnp.asarray(mask))
    ids_t = torch.from_numpy(ids.astype(np.int64)).to(device)
    mask_t = torch.from_numpy(mask.astype(np.int64)).to(device)
    fns, compile_s = {}, {}
    for layout in LAYOUTS:
        split = layout == "split"
        part = dataclasses.replace(ours, params=fuse_projections(split_layers(ours.params))) if split else ours
        fn, compile_s[layout] = compile_jax(our_generate(part, new_tokens, per_layer=layout != "scan"), part.params,
                                            *args)
        fns[f"jax_{layout}"] = (lambda f, p: lambda: f(p, *args))(fn, part.params)
    fns["torch"] = lambda: hf.generate(input_ids=ids_t, attention_mask=mask_t, max_new_tokens=new_tokens,
                                       do_sample=False, num_beams=1, use_cache=True, pad_token_id=0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    timed = round_robin(fns, warmup=1, repeats=repeats, sync=sync)
    ref = timed["torch"][1][:, prompt:].cpu().numpy()
    nbytes = decode_weight_bytes(ours)
    row = {"name": f"decode {name} b{batch} +{new_tokens}", "size": name, "batch": batch, "new_tokens": new_tokens,
           "params": int(sum(p.numel() for p in hf.parameters())), "weight_bytes_per_step": nbytes,
           "torch_tokens_per_s": batch * new_tokens / timed["torch"][0].min_s,
           "torch_bandwidth_fraction": nbytes * new_tokens / timed["torch"][0].min_s / bandwidth}
    for layout in LAYOUTS:
        t, tokens = timed[f"jax_{layout}"]
        tokens = np.asarray(tokens)
        row[layout] = {"tokens_per_s": batch * new_tokens / t.min_s, "median_s": t.median_s, "min_s": t.min_s,
                       "compile_s": compile_s[layout], "speedup_vs_torch": timed["torch"][0].min_s / t.min_s,
                       "bandwidth_fraction": nbytes * new_tokens / t.min_s / bandwidth,
                       # bfloat16 on both sides, different kernels: near-ties may differ, then the rest.
                       "greedy_match_fraction_vs_torch": float((tokens == ref).mean()),
                       "first_token_equal": bool((tokens[:, 0] == ref[:, 0]).all())}
    return row


# --- train ------------------------------------------------------------------------------------------------------

def train_case(quick: bool, batch: int, text_len: int, steps: int) -> dict:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    overrides = ["init.parts={}", "mesh={data: -1, fsdp: 1, tensor: 1}", f"train.global_batch_size={batch}",
                 "train.steps=100"]
    if quick:
        overrides += ["model.preset=tiny-av-qwen2", "model.dtype=float32", "optimizer.trainable=[connector]"]
    cfg = load_train_config(os.path.join(here, "launch", "configs", "video_pretrain.yaml"), overrides)
    model_cfg = cfg.model.resolve()
    mesh = make_mesh(cfg.mesh.axes())
    program = train_program(cfg, model_cfg, mesh, 100)
    with use_mesh(mesh, LOGICAL_AXIS_RULES):
        params = initial_params(cfg.init, program.model, dummy_batch(model_cfg), program.boxed, mesh, 0)
        state = new_state(params, program.tx, program.shardings, 0)
        rng = np.random.default_rng(0)
        host = {}
        for k, (shape, dtype) in train_batch_shapes(model_cfg, batch, text_len).items():
            if k in ("input_ids", "labels"):
                host[k] = rng.integers(3, model_cfg.decoder.vocab_size, shape).astype(dtype)
            elif dtype == np.float32:
                host[k] = rng.standard_normal(shape).astype(dtype)
            else:
                host[k] = np.ones(shape, dtype) if k != "bad" else np.zeros(shape, dtype)
        host["input_ids"][:, 1] = C.VIDEO_TOKEN_INDEX
        host["labels"][:, :text_len // 2] = -100  # the prompt half: no loss, as in fine-tuning data
        if "has_audio" in host:
            host["has_audio"][:] = False
        data = shard_batch(host, mesh)
        t0 = time.perf_counter()
        state, metrics = program.step(state, data)
        jax.block_until_ready(metrics)
        first_s = time.perf_counter() - t0  # compile + one step
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = program.step(state, data)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    flops = program.step_flops(batch, text_len)
    peak = peak_flops(jax.devices()[0].device_kind)
    return {"phase": cfg.name, "preset": cfg.model.preset, "dtype": cfg.model.dtype, "remat": cfg.model.remat,
            "batch": batch, "text_len": text_len, "seq_len": program.seq_len(text_len), "trainable": cfg.optimizer.trainable,
            "params": {k: int(v) for k, v in program.matmul_params.items()}, "compile_and_first_step_s": first_s,
            "step_s": step_s, "step_times_s": times, "flops_per_step": flops,
            "loss": float(jax.device_get(metrics["loss"])), "mfu_vs_datasheet": flops / step_s / peak if peak else None,
            "datasheet_peak_flops": peak}


# --- report -----------------------------------------------------------------------------------------------------

def plot(result: dict, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["decode"]
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["name"].replace("decode ", "") for r in rows]
    x = np.arange(len(rows))
    for i, (side, label) in enumerate((("scan", "ours, scanned layers"), ("split", "ours, split layers (default)"))):
        axes[0].bar(x + 0.27 * (i - 1), [r[side]["bandwidth_fraction"] for r in rows], 0.27, label=label)
    axes[0].bar(x + 0.27, [r["torch_bandwidth_fraction"] for r in rows], 0.27, label="transformers generate")
    axes[0].axhline(0.8, color="k", ls="--", lw=1)
    axes[0].set_xticks(x, names, rotation=20)
    axes[0].set_ylabel("weight reads / measured copy bandwidth")
    axes[0].set_title("decode, bfloat16")
    axes[0].legend(fontsize=8)
    for i, side in enumerate(LAYOUTS):
        axes[1].bar(x + 0.4 * (i - 0.5), [r[side]["speedup_vs_torch"] for r in rows], 0.4, label=side)
    axes[1].axhline(1.0, color="k", lw=1)
    axes[1].set_xticks(x, names, rotation=20)
    axes[1].set_ylabel("ours tokens/s / transformers tokens/s")
    axes[1].legend(fontsize=8)
    env = result["env"]
    fig.suptitle(f"{env['device_kind']} ({env['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(result: dict) -> str:
    lim = result["limits"]
    lines = [f"device {result['env']['device_kind']}: copy {lim['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s, "
             f"bf16 matmul {lim['matmul_bf16_flops_per_s'] / 1e12:.0f} TFLOP/s",
             "| case | ours split tok/s | ours scan tok/s | transformers tok/s | split / transformers | "
             "bandwidth (split / scan / transformers) | greedy match (split) |", "|---|---|---|---|---|---|---|"]
    for r in result["decode"]:
        lines.append(f"| {r['name']} | {r['split']['tokens_per_s']:.1f} | {r['scan']['tokens_per_s']:.1f} | "
                     f"{r['torch_tokens_per_s']:.1f} | {r['split']['speedup_vs_torch']:.2f}x | "
                     f"{r['split']['bandwidth_fraction']:.0%} / {r['scan']['bandwidth_fraction']:.0%} / "
                     f"{r['torch_bandwidth_fraction']:.0%} | {r['split']['greedy_match_fraction_vs_torch']:.2f} |")
    for r in result.get("layouts", []):
        lines.append(f"{r['name']}: " + ", ".join(f"{k} {v['tokens_per_s']:.1f} tok/s ({v['bandwidth_fraction']:.0%})"
                                                 for k, v in r.items() if isinstance(v, dict)))
    t = result.get("train")
    if t:
        lines.append(f"train {t['phase']} {t['preset']} batch {t['batch']} x {t['seq_len']} positions: "
                     f"{t['step_s'] * 1e3:.0f} ms/step, MFU {t['mfu_vs_datasheet'] or float('nan'):.1%} of the "
                     f"datasheet peak, {t['flops_per_step'] / t['step_s'] / lim['matmul_bf16_flops_per_s']:.1%} "
                     f"of the measured matmul rate")
    return "\n".join(lines)


def run_decode(name, cfg, a, result, device, new_tokens, repeats, save):
    import torch

    from benchmarks.cases import quiet_transformers  # local: cases imports torch at the top
    with quiet_transformers():
        t0 = time.perf_counter()
        hf = torch_decoder(cfg, device)
        ours = our_decoder(cfg, hf)
        print(f"{name}: built in {time.perf_counter() - t0:.1f} s", flush=True)
        try:
            for batch in (int(b) for b in a.batches.split(",")):
                row = decode_case(name, cfg, hf, ours, batch, new_tokens,
                                  result["limits"]["copy_bandwidth_bytes_per_s"], device, repeats)
                result["decode"].append(row)
                print(json.dumps(row), flush=True)
                save()
        finally:
            del hf, ours
            if device == "cuda":
                torch.cuda.empty_cache()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--plan", default=None,
                   help="what runs, in order: decode sizes and 'train', comma-separated (default: every size, then train)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--layouts", default="scan,unrolled,split", help="for layouts-SIZE plan items")
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--train-batch", type=int, default=None)
    p.add_argument("--train-text-len", type=int, default=None)
    a = p.parse_args(argv)
    import torch

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    os.makedirs(a.out, exist_ok=True)
    result = {"env": {**environment(device), "date": time.strftime("%Y-%m-%d")}}
    result["limits"] = device_limits(a.quick)
    print(json.dumps(result["limits"]), flush=True)
    new_tokens = a.new_tokens or (4 if a.quick else 64)
    repeats = a.repeats or (2 if a.quick else 5)
    sizes = decode_sizes(a.quick)
    plan = a.plan.split(",") if a.plan else [*sizes, "train"]
    unknown = [x for x in plan if x.removeprefix("layouts-") not in sizes and x != "train"]
    if unknown:
        p.error(f"--plan: unknown {unknown}; known: {', '.join([*sizes, 'train'])}")
    result["decode"], result["errors"] = [], {}
    out_json = os.path.join(a.out, "accelerator.json")

    def save():
        with open(out_json, "w") as f:
            json.dump(result, f, indent=1)

    for item in plan:
        try:  # one case failing (out of memory, say) still leaves the others' figures
            if item.startswith("layouts-"):
                size = item.split("-", 1)[1]
                for batch in (int(b) for b in a.batches.split(",")):
                    result.setdefault("layouts", []).append(layouts_case(
                        size, sizes[size], batch, new_tokens, result["limits"]["copy_bandwidth_bytes_per_s"],
                        a.layouts.split(","), repeats))
                    save()
            elif item == "train":
                result["train"] = train_case(a.quick, a.train_batch or (2 if a.quick else 4),
                                             a.train_text_len or (32 if a.quick else 512), 2 if a.quick else 5)
                print(json.dumps(result["train"]), flush=True)
            else:
                run_decode(item, sizes[item], a, result, device, new_tokens, repeats, save)
        except Exception as e:
            import traceback
            traceback.print_exc()
            result["errors"][item] = f"{type(e).__name__}: {e}"[:2000]
        save()
    save()
    plot(result, os.path.join(a.out, "accelerator.png"))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
