"""Shared helpers for parity tests against transformers' PyTorch decoders (imported by the test files)."""
import numpy as np
import torch


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
