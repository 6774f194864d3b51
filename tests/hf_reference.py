"""Shared helpers for parity tests against transformers' PyTorch decoders (imported by the test files)."""
import flax.linen as nn
import numpy as np
import torch
import transformers

from vllama_jax.checkpoints import read_state_dict, to_params
from vllama_jax.config import DecoderConfig, load_config
from vllama_jax.models.decoder import abstract_params, hf_key_map


def randomize(model):
    """HF's init (std 0.02, unit norms, zero biases) would make every logit nearly 0 and hide errors:
    draw weights at unit-variance scale, norms around 1, biases non-zero."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)


def tiny_hf_decoder(cfg: DecoderConfig, folder: str):
    """A random HF CausalLM of `cfg` (float32, eager attention), written with `save_pretrained` to `folder`
    and read back by our loader (read_state_dict + hf_key_map + to_params): (HF model, our config, params)."""
    torch.manual_seed(0)
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf_config())
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="eager").eval()
    randomize(hf)
    hf.save_pretrained(folder)
    ours = DecoderConfig.from_hf_config(load_config(folder))
    params = to_params(read_state_dict(folder), hf_key_map(ours), nn.unbox(abstract_params(ours)), source=folder)
    return hf, ours, params


def left_padded_batch(vocab: int, seed: int = 0):
    """(2, 9) token ids and a mask whose second row has 3 left-padding positions."""
    ids = np.random.default_rng(seed).integers(3, vocab, size=(2, 9))
    mask = np.ones(ids.shape, bool)
    mask[1, :3] = False
    return ids, mask


def hf_forward(model, ids, mask, **kwargs):
    """The HF model's output with positions counted over the real tokens, as generate() passes them for
    left-padded prompts (and as our decoder counts them)."""
    positions = np.clip(np.cumsum(mask, axis=-1) - 1, 0, None)
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                     position_ids=torch.tensor(positions), **kwargs)


def hf_logits(model, ids, mask) -> np.ndarray:
    return hf_forward(model, ids, mask).logits.numpy()
