"""Flags that several commands share, defined once: the model to load and how (`chat`, `answer`, `eval`,
`serve`). `load_model(args)` turns them into `vllama_jax.load(...)`; the frame count defaults to the
checkpoint's own (`num_frames` in its config.json), the one source of it."""


def add_model_flags(p, context_help: str = "longest prompt + answer in tokens (default: the decoder's "
                                           "max_position_embeddings; more lets RoPE run past the trained length)"):
    p.add_argument("--model", required=True, help="VideoLLaMA 2 checkpoint folder")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute and param dtype (float32 reproduces the original; bfloat16 on accelerators)")
    p.add_argument("--num-frames", type=int, help="frames per video (default: the checkpoint's)")
    p.add_argument("--max-context", type=int, help=context_help)
    p.add_argument("--quantize", choices=("int8",), help="int8 weight-only decoder (per-channel scales): faster "
                   "memory-bound decoding on the CPU, logits within ~2%% of their spread of float32's")


def load_model(args):
    """`vllama_jax.load` with the flags of `add_model_flags`."""
    import jax.numpy as jnp

    import vllama_jax

    return vllama_jax.load(args.model, dtype=getattr(jnp, args.dtype), num_frames=args.num_frames,
                           max_context=args.max_context, quantize=args.quantize)
