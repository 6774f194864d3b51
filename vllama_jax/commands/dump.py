"""`vllama-jax dump --model PATH --inputs IN.npz --out OUT.npz [--greedy N]`: run a model in float32 on
pre-processed inputs and write its outputs, under the names of the reference fixtures.

    VideoLLaMA 2 folder  in: input_ids, attention_mask, labels, s{i}_modal, s{i}_video / s{i}_image / s{i}_audio
                         out: logits, loss, inputs_embeds, attention_mask, labels, vision_features, projector_out,
                              audio_projector_out, greedy_s0 (with --greedy N: sample 0 alone, N greedy tokens)
    decoder folder       in: input_ids, attention_mask   out: logits (positions counted over unmasked tokens)
    vision tower folder  in: pixel_values                out: last_hidden_state, hidden_states (layers+1, N, tokens, C)
    BEATs .pt            in: fbank                       out: features
"""
import logging

import numpy as np

HELP = "run a model on pre-processed inputs (npz) and write its outputs (npz), float32"


def add_arguments(p):
    p.add_argument("--model", required=True, help="checkpoint folder (VideoLLaMA 2 or an HF part) or a BEATs .pt")
    p.add_argument("--inputs", required=True, help="npz of pre-processed inputs")
    p.add_argument("--out", required=True, help="npz to write")
    p.add_argument("--greedy", type=int, default=0, help="also generate N greedy tokens for sample 0 (greedy_s0)")


def main(args) -> int:
    import jax

    logging.basicConfig(level=logging.WARNING)
    jax.config.update("jax_default_matmul_precision", "highest")
    try:
        inputs = dict(np.load(args.inputs, allow_pickle=False))
    except Exception as e:
        raise SystemExit(f"{args.inputs}: cannot read inputs npz ({e})")
    from vllama_jax.dump import run_dump
    result = run_dump(args.model, inputs, args.greedy)
    np.savez(args.out, **result)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in result.items()))
    return 0
