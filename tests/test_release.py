"""The release layout, both ways (checkpoints/release.py): every fixture of the original code loads, exports
to exactly the keys the original wrote (its `model.safetensors` key set, and the tower folder's for the
audio-visual layout), and loads back to identical params; the vision tower from its folder when the
checkpoint lacks it; broken checkpoints name the file, the key and both shapes."""
import json
import logging
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import vllama_jax
from vllama_jax.checkpoints.keymap import CheckpointError, flatten
from vllama_jax.checkpoints.export import save_videollama2
from vllama_jax.loading import read_videollama2

from conftest import FIXTURES

NAMES = ["v_mistral_clip_stc", "av_qwen2_clip_stc", "v_qwen2_siglip_v35"]
TOWER = "model.vision_tower.vision_tower.vision_model."


def _keys(path):
    return set(load_file(str(path)))


def _same(a, b):
    fa, fb = flatten(a), flatten(b)
    assert set(fa) == set(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg="/".join(k))


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_writes_the_originals_keys(name, tmp_path):
    src = FIXTURES / name
    ckpt = read_videollama2(str(src))
    out = save_videollama2(str(tmp_path / "export"), ckpt.config, ckpt.params, unused=ckpt.unused,
                           vision_folder=ckpt.vision_folder)
    ours = load_file(f"{out}/model.safetensors")
    theirs = load_file(str(src / "model.safetensors"))
    assert set(ours) == set(theirs)
    for k in theirs:  # float32 throughout: bit for bit, the unused head and BEATs' table copies included
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
    if name == "av_qwen2_clip_stc":  # the audio-visual branch keeps the tower in its folder
        assert _keys(f"{out}/vision_tower/model.safetensors") == _keys(src / "clip-vit-tiny-patch14-56/model.safetensors")
    again = read_videollama2(out)
    _same(again.params, ckpt.params)
    assert set(again.unused) == set(ckpt.unused)


def test_siglip_checkpoint_sets_the_pooling_head_aside(caplog):
    with caplog.at_level(logging.INFO, logger="vllama_jax.checkpoints.release"):
        ckpt = read_videollama2(str(FIXTURES / "v_qwen2_siglip_v35"))
    assert sorted(ckpt.unused) == sorted(k for k in _keys(FIXTURES / "v_qwen2_siglip_v35/model.safetensors")
                                         if k.startswith(TOWER + "head."))
    assert "post_layernorm" in ckpt.params["vision"]  # a param of the tower, as in HF's SiglipVisionModel
    said = [r for r in caplog.records if "does not use" in r.getMessage()]
    assert len(said) == 1 and "11 tensor(s)" in said[0].getMessage()


def test_model_save_keeps_the_head(tmp_path):
    model = vllama_jax.load(str(FIXTURES / "v_qwen2_siglip_v35"))
    out = model.save(str(tmp_path / "saved"))
    assert _keys(f"{out}/model.safetensors") == _keys(FIXTURES / "v_qwen2_siglip_v35/model.safetensors")


def test_export_without_loaded_head_reads_it_from_the_tower_folder(tmp_path):
    src = FIXTURES / "v_qwen2_siglip_v35"
    ckpt = read_videollama2(str(src))
    out = save_videollama2(str(tmp_path / "e"), ckpt.config, ckpt.params, vision_folder=str(src / "siglip-tiny-patch14-56"))
    ours = load_file(f"{out}/model.safetensors")
    folder = load_file(str(src / "siglip-tiny-patch14-56/model.safetensors"))
    assert set(ours) == _keys(src / "model.safetensors")
    np.testing.assert_array_equal(ours[TOWER + "head.probe"], folder["vision_model.head.probe"])


def _copy_but_weights(src, dst):
    """The fixture folder without its own model.safetensors and npz files (the tower folder keeps its weights)."""
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n == "model.safetensors" or
                                                       n.endswith(".npz")] if d == str(src) else [])


def _copy_without_tower_keys(src, dst):
    _copy_but_weights(src, dst)
    sd = load_file(str(src / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if not k.startswith("model.vision_tower.")}, str(dst / "model.safetensors"))


@pytest.mark.parametrize("name,tower", [("v_qwen2_siglip_v35", "siglip-tiny-patch14-56"),
                                        ("v_mistral_clip_stc", "clip-vit-tiny-patch14-56")])
def test_tower_from_the_mm_vision_tower_folder(name, tower, tmp_path):
    """A checkpoint without tower keys (the audio-visual branch's layout, a LoRA fine-tune) reads the tower
    from the folder its config names; those weights are the folder's (they differ from the checkpoint's)."""
    _copy_without_tower_keys(FIXTURES / name, tmp_path / "c")
    ckpt = read_videollama2(str(tmp_path / "c"))
    folder = load_file(str(FIXTURES / name / tower / "model.safetensors"))
    np.testing.assert_array_equal(ckpt.params["vision"]["embeddings"]["position_embedding"],
                                  folder["vision_model.embeddings.position_embedding.weight"])
    assert set(ckpt.unused) == {TOWER + k[len("vision_model."):] for k in folder if ".head." in k}


def _edited(tmp_path, edit):
    src = FIXTURES / "v_qwen2_siglip_v35"
    dst = tmp_path / "edited"
    _copy_but_weights(src, dst)
    sd = load_file(str(src / "model.safetensors"))
    edit(sd)
    save_file(sd, str(dst / "model.safetensors"))
    return dst


def test_missing_key_is_named_with_its_shape(tmp_path):
    key = "model.layers.1.mlp.up_proj.weight"
    d = _edited(tmp_path, lambda sd: sd.pop(key))
    with pytest.raises(CheckpointError, match=rf"edited.*missing key\(s\) {key}: model expects \(128, 64\)"):
        vllama_jax.load(str(d))


def test_extra_key_is_named_with_its_shape_and_file(tmp_path):
    key = "model.layers.1.mlp.extra_proj.weight"  # looks like a weight, is none of the model's
    d = _edited(tmp_path, lambda sd: sd.update({key: np.zeros((128, 64), np.float32)}))
    with pytest.raises(CheckpointError, match=rf"edited/model\.safetensors: unexpected key\(s\) {key}: "
                                              r"checkpoint \(128, 64\), model has no such param"):
        vllama_jax.load(str(d))


@pytest.mark.parametrize("key,shape,want", [
    ("model.layers.0.self_attn.q_proj.weight", (64, 60), r"\(64, 64\)"),
    (TOWER + "post_layernorm.weight", (31,), r"\(32,\)"),
    (TOWER + "head.mlp.fc1.weight", (64, 31), r"\(64, 32\)"),  # unused, still checked
])
def test_misshaped_key_is_named_with_both_shapes(tmp_path, key, shape, want):
    d = _edited(tmp_path, lambda sd: sd.update({key: np.zeros(shape, np.float32)}))
    with pytest.raises(CheckpointError, match=rf"edited/model\.safetensors: key {key}: checkpoint "
                                              rf"\({', '.join(map(str, shape))},?\), .*{want}"):
        vllama_jax.load(str(d))


def test_tower_keys_in_a_checkpoint_without_a_tower_are_named(tmp_path):
    """An audio-only config (no mm_vision_tower) given a checkpoint that carries tower keys."""
    src = FIXTURES / "v_qwen2_siglip_v35"
    d = tmp_path / "novision"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("*.npz"))
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("mm_vision_tower")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) model\.(vision_tower|mm_projector)\..*model has no such param \(this config has no"):
        read_videollama2(str(d))
