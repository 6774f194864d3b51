"""CLIP and SigLIP vision towers against transformers' CLIPVisionModel / SiglipVisionModel (tiny random
weights, saved with save_pretrained and read by our loader) and against the original VideoLLaMA 2
code's `vision_features` in the reference fixtures."""
import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from vllama_jax.checkpoints.hf_files import read_state_dict
from vllama_jax.checkpoints.keymap import CheckpointError
from vllama_jax.config import CLIP_VIT_L_14_336, SIGLIP_SO400M_14_384, TINY_CLIP, TINY_SIGLIP
from vllama_jax.models.vision_tower import (abstract_params, load_vision_tower, tower_params,
                                            vision_tower_class)

TOL = 1e-4
HF_CLASSES = {"clip": (transformers.CLIPVisionModel, transformers.CLIPVisionConfig),
              "siglip": (transformers.SiglipVisionModel, transformers.SiglipVisionConfig)}


def hf_config(config):
    d = config.to_hf_config()
    d.pop("model_type")
    return HF_CLASSES[config.family][1](**d)


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module", params=["clip", "siglip"])
def tower(request, tmp_path_factory):
    """A 3-layer tiny tower saved by transformers, its HF outputs, and ours loaded from the folder."""
    family = request.param
    config = dataclasses.replace(TINY_CLIP if family == "clip" else TINY_SIGLIP, num_layers=3)
    torch.manual_seed(0)
    hf = HF_CLASSES[family][0](hf_config(config)).eval()
    with torch.no_grad():  # move every param off its init value (zero biases, unit norms) so each one counts
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp(family)
    hf.save_pretrained(folder)
    pixels = np.random.default_rng(0).standard_normal((2, 3, config.image_size, config.image_size)).astype(np.float32)
    with torch.no_grad():
        ref = hf(torch.from_numpy(pixels), output_hidden_states=True)
    loaded_config, params = load_vision_tower(str(folder))
    model = vision_tower_class(family)(loaded_config)
    return dict(family=family, config=loaded_config, folder=folder, params=params, model=model, pixels=pixels,
                ref_hidden=np.stack([h.numpy() for h in ref.hidden_states]),
                ref_last=ref.last_hidden_state.numpy())


def test_loaded_config(tower):
    assert tower["config"].num_layers == 3 and tower["config"].family == tower["family"]


def test_hidden_states_match_transformers(tower):
    out = tower["model"].apply({"params": tower["params"]}, tower["pixels"], output_hidden_states=True)
    hidden = np.asarray(out["hidden_states"])
    assert hidden.shape == tower["ref_hidden"].shape  # (layers + 1, N, tokens, C)
    for i in range(hidden.shape[0]):
        err = np.abs(hidden[i] - tower["ref_hidden"][i]).max()
        assert err <= TOL, f"hidden state {i}: max abs error {err}"
    err = np.abs(np.asarray(out["last_hidden_state"]) - tower["ref_last"]).max()
    assert err <= TOL, f"last_hidden_state: max abs error {err}"


def test_features_are_the_selected_hidden_state(tower):
    feats = np.asarray(tower["model"].apply({"params": tower["params"]}, tower["pixels"], method="features"))
    want = tower["ref_hidden"][-2]
    if tower["family"] == "clip":
        want = want[:, 1:]  # 'patch': the class token dropped
    assert feats.shape == want.shape
    assert np.abs(feats - want).max() <= TOL


def test_partial_run_is_a_shorter_tower(tower):
    out = tower["model"].apply({"params": tower["params"]}, tower["pixels"], output_hidden_states=True,
                               num_layers=1)
    hidden = np.asarray(out["hidden_states"])
    assert hidden.shape[0] == 2
    assert np.abs(hidden - tower["ref_hidden"][:2]).max() <= TOL


@pytest.mark.parametrize("name", ["av_qwen2_clip_stc", "v_mistral_clip_stc"])
def test_fixture_vision_features(name, fixtures_dir):
    """The original code's tower output, frames of every sample in batch order. The audio-visual model
    takes its tower from the tower folder, the video-only one from its own checkpoint."""
    fix = fixtures_dir / name
    inputs, expected = np.load(fix / "inputs.npz"), np.load(fix / "expected.npz")
    config, params = load_vision_tower(str(fix / "clip-vit-tiny-patch14-56"))
    if name == "v_mistral_clip_stc":
        state_dict = read_state_dict(str(fix / "model.safetensors"))
        params = tower_params(config, state_dict, "model.vision_tower.vision_tower.vision_model.")
    frames = []
    for i in range(int(inputs["batch_size"])):
        assert str(inputs[f"s{i}_modal"]) in ("video", "av")
        frames.append(inputs[f"s{i}_video"])
    feats = vision_tower_class(config.family)(config).apply({"params": params}, np.concatenate(frames),
                                                          method="features")
    want = expected["vision_features"]
    assert feats.shape == want.shape
    err = np.abs(np.asarray(feats) - want).max()
    assert err <= TOL, f"{name}: max abs error {err}"


@pytest.mark.parametrize("config", [CLIP_VIT_L_14_336, SIGLIP_SO400M_14_384], ids=["clip-L-336", "siglip-so400m"])
def test_param_count_matches_transformers(config):
    ours = count(abstract_params(config))
    with torch.device("meta"):
        hf = HF_CLASSES[config.family][0](hf_config(config))
    # SigLIP's attention-pooling head is not part of our tower (VideoLLaMA 2 does not use it).
    hf_count = sum(p.numel() for n, p in hf.named_parameters()
                   if not n.removeprefix("vision_model.").startswith("head."))
    assert ours == hf_count
    if config.family == "clip":
        assert ours == 303_507_456


def _resave(src, dst, edit):
    sd = load_file(str(src / "model.safetensors"))
    edit(sd)
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    save_file(sd, str(dst / "model.safetensors"))


def test_missing_key_is_named(tower, tmp_path):
    key = "encoder.layers.1.mlp.fc1.weight"
    _resave(tower["folder"], tmp_path / "t", lambda sd: sd.pop(key))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_vision_tower(str(tmp_path / "t"))


def test_misshaped_key_is_named(tower, tmp_path):
    key = "embeddings.position_embedding.weight"
    _resave(tower["folder"], tmp_path / "t", lambda sd: sd.update({key: sd[key][:-1]}))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_vision_tower(str(tmp_path / "t"))
