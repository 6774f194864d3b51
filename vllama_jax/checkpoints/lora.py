"""LoRA fine-tunes of VideoLLaMA 2: a PEFT adapter + the non-LoRA trainables, merged into their base model.

The original's LoRA training (`--lora_enable`) leaves a folder that is not a loadable model on its own:

    config.json                 the whole VideoLLaMA 2 config; `_name_or_path` is the base model it trained from
    adapter_config.json         PEFT's LoraConfig: r, lora_alpha, target_modules, fan_in_fan_out, ...
    adapter_model.safetensors   (or .bin) `base_model.model.<module>.lora_A.weight` (r, in) and `.lora_B.weight` (out, r)
    non_lora_trainables.bin     every other trained tensor (the connector, ...), under PEFT's wrapper prefixes

The model it describes is the base model's weights, overlaid with the non-LoRA trainables, with each
adapted linear layer merged: W' = W + scale * B @ A, scale = lora_alpha / r (lora_alpha / sqrt(r) with
rsLoRA). This is done here in HF key space, before any key map, so the merged state dict goes through the
same release table (checkpoints/release.py) as a released checkpoint. The vision tower is not in the folder: as in the
original, it comes from the base (a VideoLLaMA 2 base) or from the folder `mm_vision_tower` names.

    merged = merge_lora_folder("finetune_lora", base="Mistral-7B-Instruct-v0.2")
    merged.state_dict   # {release key: array}, ready for loading.read_videollama2
    merged.base         # the base folder used (tokenizer files usually live there)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Dict, Optional

import numpy as np

from vllama_jax.checkpoints.hf_files import StateDict, read_state_dict
from vllama_jax.checkpoints.keymap import CheckpointError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
NON_LORA_TRAINABLES = "non_lora_trainables.bin"
PEFT_PREFIX = "base_model.model."  # PeftModelForCausalLM.base_model (LoraModel).model (the wrapped model)

# adapter_config.json options that change the merge in a way this module does not implement.
UNSUPPORTED = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "lora_bias": "a bias on lora_B",
    "alpha_pattern": "per-module lora_alpha (alpha_pattern)",
    "layer_replication": "layer replication",
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "trainable_token_indices": "trainable token indices",
}


class LoRAError(CheckpointError):
    """A LoRA folder that cannot be merged: names the file and, where there is one, the key."""


def is_lora_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


@dataclasses.dataclass(frozen=True)
class Adapter:
    """One PEFT LoRA adapter, keyed by the names of the base model (PEFT's wrapper prefix removed)."""

    source: str  # the weights file, for error messages
    pairs: Dict[str, tuple]  # module ("model.layers.0.self_attn.q_proj") -> (A (r, in), B (out, r))
    tensors: StateDict  # whole tensors the adapter also saves (trained biases with bias="all", ...)
    lora_alpha: float
    use_rslora: bool
    fan_in_fan_out: bool  # the base weights are stored (in, out) (GPT-2's Conv1D), not nn.Linear's (out, in)

    def scale(self, rank: int) -> float:
        # The rank comes from each lora_A, so `rank_pattern` (per-module ranks) needs no special case.
        return self.lora_alpha / (math.sqrt(rank) if self.use_rslora else rank)


def read_adapter(folder: str) -> Adapter:
    """adapter_config.json + adapter_model.{safetensors,bin} of `folder`, checked for what we can merge."""
    config_path = os.path.join(folder, ADAPTER_CONFIG)
    with open(config_path) as f:
        cfg = json.load(f)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise LoRAError(f"{config_path}: peft_type '{cfg.get('peft_type')}' is not supported, only LORA")
    for option, what in UNSUPPORTED.items():
        if cfg.get(option):
            raise LoRAError(f"{config_path}: {option}={cfg[option]!r}: {what} is not supported; "
                            "merge this adapter with PEFT's merge_and_unload() instead")
    weights = next((os.path.join(folder, n) for n in ADAPTER_WEIGHTS if os.path.exists(os.path.join(folder, n))), None)
    if weights is None:
        raise LoRAError(f"{folder}: no adapter weights (looked for {', '.join(ADAPTER_WEIGHTS)})")

    lora: Dict[str, Dict[str, np.ndarray]] = {}
    tensors: StateDict = {}
    for key, value in read_state_dict(weights).items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if "lora_embedding_" in name or "lora_magnitude_vector" in name:
            raise LoRAError(f"{weights}: key {key}: LoRA on embeddings / DoRA is not supported")
        pair = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.weight", name)
        if pair:
            lora.setdefault(pair.group(1), {})[pair.group(2)] = value
        else:  # PEFT keeps an adapted layer's own tensors under `base_layer`
            tensors[name.replace(".base_layer.", ".")] = value
    pairs = {}
    for module, ab in sorted(lora.items()):
        for part in ("lora_A", "lora_B"):
            if part not in ab:
                raise LoRAError(f"{weights}: {PEFT_PREFIX}{module}.{part}.weight is missing "
                                f"(the file has the other half of the pair)")
        pairs[module] = (ab["lora_A"], ab["lora_B"])
    return Adapter(weights, pairs, tensors, float(cfg["lora_alpha"]), bool(cfg.get("use_rslora")),
                   bool(cfg.get("fan_in_fan_out")))


def merge_adapter(state_dict: StateDict, adapter: Adapter, base: str = "base model") -> StateDict:
    """`state_dict` with every adapted weight merged (float32) and the adapter's whole tensors put in place."""
    out = dict(state_dict)
    for name, value in adapter.tensors.items():
        if name not in out:
            raise LoRAError(f"{adapter.source}: key {name} replaces a tensor that {base} does not have")
        out[name] = value
    for module, (a, b) in adapter.pairs.items():
        key = module + ".weight"
        if key not in out:
            raise LoRAError(f"{adapter.source}: adapter for {module}, but {base} has no {key}")
        w = np.asarray(out[key], np.float32)
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoRAError(f"{adapter.source}: {module}: lora_A {a.shape} and lora_B {b.shape} are not a "
                            "(r, in), (out, r) pair")
        delta = (b @ a).T if adapter.fan_in_fan_out else b @ a
        if delta.shape != w.shape:
            raise LoRAError(f"{adapter.source}: {module}: lora_B @ lora_A is {delta.shape}, but {key} of {base} "
                            f"is {w.shape}")
        out[key] = w + np.float32(adapter.scale(a.shape[0])) * delta
    return out


def read_non_lora_trainables(folder: str) -> StateDict:
    """non_lora_trainables.bin under release names (empty when the folder has none).

    The original saves `model.named_parameters()` of the PEFT-wrapped model, so names carry
    `base_model.` and then the wrapped model's own `model.` (`base_model.model.model.mm_projector.*`);
    both come off, as the original's loader does, leaving `model.mm_projector.*`, `lm_head.weight`."""
    path = os.path.join(folder, NON_LORA_TRAINABLES)
    if not os.path.exists(path):
        return {}
    sd = {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in read_state_dict(path).items()}
    if any(k.startswith("model.model.") for k in sd):
        sd = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in sd.items()}
    return sd


def resolve_base(folder: str, base: Optional[str] = None) -> str:
    """The base model folder: `base`, else the `_name_or_path` the training saved in config.json, else the
    adapter's `base_model_name_or_path`; a relative name is also tried under the LoRA folder's parent."""
    if base is not None:
        if not os.path.isdir(base):
            raise LoRAError(f"{folder}: base model folder {base} does not exist")
        return base
    named = []
    for file, field in (("config.json", "_name_or_path"), (ADAPTER_CONFIG, "base_model_name_or_path")):
        path = os.path.join(folder, file)
        if os.path.exists(path):
            with open(path) as f:
                value = json.load(f).get(field)
            if value:
                named.append(f"{file} {field}='{value}'")
                for cand in (value, os.path.join(os.path.dirname(os.path.abspath(folder)), value)):
                    if os.path.isdir(cand):
                        return cand
    raise LoRAError(f"{folder}: a LoRA checkpoint needs the base model it was trained from; "
                    + (", ".join(named) + " is not a local folder" if named else "its config names none")
                    + ": pass --base DIR (vllama_jax.load(path, base=DIR))")


@dataclasses.dataclass(frozen=True)
class MergedLoRA:
    state_dict: StateDict  # the whole model under release names
    base: str  # the base model folder


def merge_lora_folder(folder: str, base: Optional[str] = None) -> MergedLoRA:
    """Base weights, then the non-LoRA trainables over them, then the adapter merged (the original's order)."""
    base = resolve_base(folder, base)
    state_dict = read_state_dict(base)
    state_dict.update(read_non_lora_trainables(folder))
    return MergedLoRA(merge_adapter(state_dict, read_adapter(folder), base=base), base)
