"""`vllama-jax convert --from SRC --to DST [--base DIR] [--dtype float32|bfloat16] [--step N]`: write SRC as
a VideoLLaMA 2 checkpoint in the release layout (checkpoints/export.py), loadable by `vllama_jax.load` and,
by its key names, by the original PyTorch code.

What SRC may be:
    a LoRA fine-tune folder    the original's `--lora_enable` output (adapter_config.json, adapter_model.*,
                               non_lora_trainables.bin): merged into its base model (checkpoints/lora.py);
                               the base is `--base`, else the `_name_or_path` its config.json records
    a `vllama-jax train` run   its output_dir (Orbax checkpoints): the latest step's params, or `--step N`; the
                               model config from the run's config.yaml, the tokenizer from its data.tokenizer
    a release-layout folder    re-written, e.g. in bfloat16 (half the size)

The conversion itself is vllama_jax/checkpoints/convert.py; arrays stay in host memory (numpy).
"""
from __future__ import annotations

import logging
import os

HELP = "LoRA folder / training run / checkpoint -> a release-layout VideoLLaMA 2 checkpoint"

log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("--from", dest="src", required=True,
                   help="a LoRA fine-tune folder, a `vllama-jax train` output_dir, or a VideoLLaMA 2 checkpoint folder")
    p.add_argument("--to", dest="dst", required=True, help="the folder to write (replaced atomically if it exists)")
    p.add_argument("--base", default=None, help="LoRA: the base model folder (default: the one its config.json names)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="of the weights written")
    p.add_argument("--step", type=int, default=None, help="training run: the checkpoint step (default: the latest)")


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING)
    from vllama_jax.checkpoints.convert import convert

    try:
        folder = convert(args.src, args.dst, base=args.base, dtype=args.dtype, step=args.step)
    except (ValueError, FileNotFoundError) as e:  # checkpoint / config errors name the file and key
        raise SystemExit(f"convert: {e}")
    size = os.path.getsize(os.path.join(folder, "model.safetensors"))
    print(f"wrote {folder} ({size / 2 ** 20:.1f} MiB of {args.dtype} weights)")
    return 0
