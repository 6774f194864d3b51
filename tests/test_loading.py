"""`vllama_jax.load` and `dump` on plain HF folders of the parts, in every weight format the loader reads
(single and sharded safetensors, PyTorch .bin), against transformers' own outputs on the same folder."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import vllama_jax  # noqa: E402
from vllama_jax.config import TINY_DECODERS  # noqa: E402

from conftest import FIXTURES  # noqa: E402
from hf_reference import hf_logits, left_padded_batch  # noqa: E402

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def hf_qwen2():
    cfg = transformers.Qwen2Config(**{k: v for k, v in TINY_DECODERS["qwen2"].to_hf_config().items()
                                      if k != "model_type"}, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) / max(p.shape[-1], 1) ** 0.5)
    return model


@pytest.mark.parametrize("fmt", ["sharded_safetensors", "pytorch_bin"])
def test_decoder_folder_in_each_format(hf_qwen2, tmp_path, fmt):
    if fmt == "sharded_safetensors":
        hf_qwen2.save_pretrained(tmp_path, max_shard_size="40KB")
        assert (tmp_path / "model.safetensors.index.json").exists()
    else:
        # transformers 5 writes safetensors only; older releases (and many hub folders) carry a pickle.
        hf_qwen2.save_pretrained(tmp_path)
        os.remove(tmp_path / "model.safetensors")
        torch.save(hf_qwen2.state_dict(), tmp_path / "pytorch_model.bin")
    part = vllama_jax.load(str(tmp_path))
    ids, mask = left_padded_batch(300)
    with jax.default_matmul_precision("highest"):
        logits, _ = part(ids, attention_mask=mask)
    ref = hf_logits(hf_qwen2, ids, mask)
    assert np.abs(np.asarray(logits) - ref)[mask].max() <= 1e-4


def test_dump_decoder_and_vision_tower(hf_qwen2, tmp_path):
    hf_qwen2.save_pretrained(tmp_path / "qwen2")
    ids, mask = left_padded_batch(300)
    np.savez(tmp_path / "in.npz", input_ids=ids, attention_mask=mask)
    r = subprocess.run([sys.executable, "-m", "vllama_jax", "dump", "--model", str(tmp_path / "qwen2"), "--inputs",
                        str(tmp_path / "in.npz"), "--out", str(tmp_path / "out.npz")],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = np.load(tmp_path / "out.npz")["logits"]
    assert np.abs(got - hf_logits(hf_qwen2, ids, mask))[mask].max() <= 1e-4

    tower = FIXTURES / "av_qwen2_clip_stc" / "clip-vit-tiny-patch14-56"
    pixels = np.load(FIXTURES / "av_qwen2_clip_stc" / "inputs.npz")["s0_video"]
    np.savez(tmp_path / "pix.npz", pixel_values=pixels)
    r = subprocess.run([sys.executable, "-m", "vllama_jax", "dump", "--model", str(tower), "--inputs",
                        str(tmp_path / "pix.npz"), "--out", str(tmp_path / "vis.npz")],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = np.load(tmp_path / "vis.npz")
    ref = transformers.CLIPVisionModel.from_pretrained(str(tower)).eval()
    with torch.no_grad():
        out = ref(pixel_values=torch.tensor(pixels), output_hidden_states=True)
    want = np.stack([h.numpy() for h in out.hidden_states])
    assert got["hidden_states"].shape == want.shape
    assert np.abs(got["hidden_states"] - want).max() <= 1e-4
    assert np.abs(got["last_hidden_state"] - out.last_hidden_state.numpy()).max() <= 1e-4


def test_dump_beats_pt(tmp_path):
    fbank = np.load(FIXTURES / "av_qwen2_clip_stc" / "inputs.npz")["s0_audio"][None]
    np.savez(tmp_path / "fb.npz", fbank=fbank)
    r = subprocess.run([sys.executable, "-m", "vllama_jax", "dump", "--model",
                        str(FIXTURES / "av_qwen2_clip_stc" / "BEATs_tiny.pt"), "--inputs", str(tmp_path / "fb.npz"),
                        "--out", str(tmp_path / "feat.npz")], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    feats = np.load(tmp_path / "feat.npz")["features"]
    assert feats.shape == (1, (fbank.shape[1] // 16) * 8, 64) and np.isfinite(feats).all()
