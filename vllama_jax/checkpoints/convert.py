"""Any VideoLLaMA 2 weights -> a checkpoint folder in the release layout (`vllama-jax convert`).

    convert(src, dst, base=None, dtype="float32", step=None) -> dst

What `src` may be:
    a LoRA fine-tune folder    the original's `--lora_enable` output (adapter_config.json, adapter_model.*,
                               non_lora_trainables.bin): merged into its base model (lora.py); the base is
                               `base`, else the `_name_or_path` its config.json records
    a `vllama-jax train` run   its output_dir (Orbax checkpoints): the latest step's params, or `step`; the
                               model config from the run's config.yaml, the tokenizer from its data.tokenizer
    a release-layout folder    re-written, e.g. in bfloat16 (half the size)

Arrays stay in host memory (numpy) throughout: nothing is compiled and no accelerator is needed.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from vllama_jax.checkpoints.export import save_videollama2
from vllama_jax.checkpoints.orbax import is_run_dir, read_run_params
from vllama_jax.loading import has_tokenizer, load_tokenizer, read_videollama2
from vllama_jax.train.config import load_train_config

log = logging.getLogger(__name__)


def _tokenizer(folder: Optional[str]):
    """The tokenizer saved in `folder`, or None when it has none."""
    return load_tokenizer(folder) if folder and has_tokenizer(folder) else None


def from_run(run_dir: str, step: Optional[int] = None):
    """(config, params, tokenizer) of a training run's checkpoint."""
    import jax

    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(config_path):
        raise SystemExit(f"{run_dir}: a training run's output_dir holds the config.yaml the run wrote; none here")
    train_cfg = load_train_config(config_path)
    params = jax.device_get(read_run_params(run_dir, step=step))
    # The run read its tokenizer from data.tokenizer, else from the checkpoint it started from.
    return train_cfg.model.resolve(), params, _tokenizer(train_cfg.data.tokenizer or train_cfg.init.checkpoint)


def convert(src: str, dst: str, base: Optional[str] = None, dtype: str = "float32", step: Optional[int] = None) -> str:
    unused, vision_folder = None, None
    if is_run_dir(src):
        if base is not None:
            raise SystemExit(f"{src}: --base is for LoRA folders; this is a training run")
        cfg, params, tokenizer = from_run(src, step)
    else:
        if step is not None:
            raise SystemExit(f"{src}: --step is for training runs; this is a checkpoint folder")
        ckpt = read_videollama2(src, base)
        cfg, params, tokenizer = ckpt.config, ckpt.params, _tokenizer(ckpt.tokenizer_folder)
        unused, vision_folder = ckpt.unused, ckpt.vision_folder
    if tokenizer is None:
        log.warning("%s: no tokenizer found; %s will hold weights and config only", src, dst)
    return save_videollama2(dst, cfg, params, tokenizer, dtype=dtype, unused=unused, vision_folder=vision_folder)
