"""The whole model against the original code's outputs (tests/data/fixtures, made by DAMO-NLP-SG/VideoLLaMA2
in float32), through the `dump` command and the Python API; generation with the KV cache against transformers'
greedy `generate` on the same embeddings; clear errors for broken checkpoints."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import vllama_jax
from vllama_jax.checkpoints.keymap import CheckpointError
from vllama_jax.config import ConfigError, VIDEO_TOKEN_INDEX
from vllama_jax.generate import ContextLengthError
from vllama_jax.inference import media_batch
from vllama_jax.models.videollama2 import VideoLLaMA2

from conftest import FIXTURES

ATOL = 1e-4
NAMES = ["v_mistral_clip_stc", "av_qwen2_clip_stc", "v_qwen2_siglip_v35"]


@pytest.fixture(scope="module", params=NAMES)
def fixture(request):
    d = FIXTURES / request.param
    return d, dict(np.load(d / "inputs.npz")), dict(np.load(d / "expected.npz"))


class _Models(dict):
    """Fixture checkpoints, each loaded once, on first use."""

    def __missing__(self, name):
        self[name] = vllama_jax.load(str(FIXTURES / name))
        return self[name]


@pytest.fixture(scope="module")
def models():
    return _Models()


def _compare(got, exp):
    mask = exp["attention_mask"].astype(bool)
    assert got["logits"].shape == exp["logits"].shape
    assert np.abs(got["logits"] - exp["logits"])[mask].max() <= ATOL
    assert abs(float(got["loss"]) - float(exp["loss"])) <= ATOL
    np.testing.assert_array_equal(got["attention_mask"], exp["attention_mask"])
    np.testing.assert_array_equal(got["labels"], exp["labels"])
    assert np.abs(got["inputs_embeds"] - exp["inputs_embeds"]).max() <= ATOL
    for k in ("vision_features", "projector_out", "audio_projector_out"):
        if k in exp:
            assert got[k].shape == exp[k].shape, k
            assert np.abs(got[k] - exp[k]).max() <= ATOL, k
    np.testing.assert_array_equal(np.asarray(got["greedy_s0"]).reshape(-1), exp["greedy_s0"].reshape(-1))


def test_fixture_through_dump_command(fixture, tmp_path):
    d, _, exp = fixture
    out = tmp_path / "out.npz"
    r = subprocess.run([sys.executable, "-m", "vllama_jax", "dump", "--model", str(d), "--inputs",
                        str(d / "inputs.npz"), "--out", str(out), "--greedy", "8"],
                       capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    _compare(dict(np.load(out)), exp)


def test_fixture_through_python_api(fixture, models):
    d, inputs, exp = fixture
    from vllama_jax.dump import dump_videollama2
    with jax.default_matmul_precision("highest"):
        got = dump_videollama2(models[d.name], inputs, greedy=8)
    _compare(got, exp)


def _dump_in_layout(d, inputs, layout):
    from vllama_jax.dump import dump_videollama2
    model = vllama_jax.load(str(d), decode_layout=layout)
    layers = model.params["decoder"]["layers"]
    assert isinstance(layers, tuple) == (layout in ("split", "packed"))
    if layout in ("split", "packed"):  # and each layer's q/k/v and gate/up fused (decoder.fuse_projections)
        assert "qkv_proj" in layers[0]["self_attn"] and "gate_up_proj" in layers[0]["mlp"]
    with jax.default_matmul_precision("highest"):
        return model, dump_videollama2(model, inputs, greedy=8)


def test_fixture_in_split_layout(fixture, models, tmp_path):
    """The accelerators' decode layout (layers split into per-layer buffers, projections that share an input
    fused: models/decoder.py), run here on CPU: the original's outputs at the same tolerance; the model saves
    the release layout unchanged."""
    d, inputs, exp = fixture
    model, got = _dump_in_layout(d, inputs, "split")
    _compare(got, exp)
    model.save(str(tmp_path / "saved"))
    back = vllama_jax.load(str(tmp_path / "saved"), decode_layout="scan")
    want = models[d.name].stacked_params()
    for (kp, a), b in zip(jax.tree_util.tree_flatten_with_path(back.params)[0], jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(kp))


def test_fixture_in_scan_layout():
    """The plain scanned layout (CPU bfloat16, no C++ compiler) on the fixture with every part."""
    d = FIXTURES / "av_qwen2_clip_stc"
    _compare(_dump_in_layout(d, dict(np.load(d / "inputs.npz")), "scan")[1], dict(np.load(d / "expected.npz")))


def _hf_greedy_from_embeds(folder, inputs_embeds, attention_mask, steps):
    """Reference for the cached loop: transformers' MistralForCausalLM built from the checkpoint's own
    config.json and decoder weights, greedy `generate` on the same (left-padded) inputs_embeds."""
    import torch
    import transformers
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text())
    hf = transformers.AutoModelForCausalLM.from_config(transformers.MistralConfig(**{**cfg, "model_type": "mistral"}),
                                                       attn_implementation="eager").eval()
    weights = load_file(folder / "model.safetensors")
    hf.load_state_dict({k: torch.from_numpy(weights[k]) for k in hf.state_dict()}, strict=True)
    with torch.no_grad():
        out = hf.generate(inputs_embeds=torch.tensor(np.array(inputs_embeds, np.float32)),
                          attention_mask=torch.tensor(np.array(attention_mask, np.int64)),
                          max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out.numpy()


def _two_prompts(model, rng):
    """Two video prompts of different lengths, left-padded into one batch, with their media."""
    v = model.config.vision
    t = model.config.num_frames
    lens = [7, 11]
    ids = np.zeros((2, max(lens)), np.int64)
    mask = np.zeros(ids.shape, bool)
    for r, n in enumerate(lens):
        row = rng.integers(3, 300, size=n)
        row[2] = VIDEO_TOKEN_INDEX
        ids[r, -n:], mask[r, -n:] = row, True
    samples = [{"video": rng.standard_normal((t, 3, v.image_size, v.image_size)).astype(np.float32)} for _ in lens]
    return ids, mask, samples


def test_cached_generation_equals_transformers_generate(models):
    model = models["v_mistral_clip_stc"]
    rng = np.random.default_rng(0)
    ids, mask, samples = _two_prompts(model, rng)
    batch = {"input_ids": ids.astype(np.int32), "attention_mask": mask, **media_batch(samples, model.config)}
    with jax.default_matmul_precision("highest"):
        got = model.generate(ids, mask, media=samples, max_new_tokens=6, stop_at_eos=False)
        # The spliced embeddings (held against the original's in test_fixture_*) as transformers' input.
        prep = model.module.apply({"params": model.params}, batch, method=VideoLLaMA2.prepare_inputs)
    ref = _hf_greedy_from_embeds(FIXTURES / "v_mistral_clip_stc", prep["inputs_embeds"], prep["attention_mask"], 6)
    np.testing.assert_array_equal(got, ref)


def test_batch_generation_equals_one_by_one(models):
    model = models["v_mistral_clip_stc"]
    rng = np.random.default_rng(1)
    ids, mask, samples = _two_prompts(model, rng)
    with jax.default_matmul_precision("highest"):
        batch = model.generate(ids, mask, media=samples, max_new_tokens=6, stop_at_eos=False)
        for r in range(2):
            alone = model.generate(ids[r][mask[r]][None], None,
                                   media=[samples[r]], max_new_tokens=6, stop_at_eos=False)
            np.testing.assert_array_equal(batch[r], alone[0])


def test_sampling_is_seeded(models):
    model = models["v_mistral_clip_stc"]
    rng = np.random.default_rng(2)
    ids, mask, samples = _two_prompts(model, rng)
    a = model.generate(ids, mask, media=samples, max_new_tokens=5, temperature=1.0, top_p=0.9, top_k=50, seed=3)
    b = model.generate(ids, mask, media=samples, max_new_tokens=5, temperature=1.0, top_p=0.9, top_k=50, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 5) and a.min() >= 0 and a.max() < model.config.decoder.vocab_size


def test_generation_stops_at_eos(models):
    model = models["v_mistral_clip_stc"]
    rng = np.random.default_rng(3)
    ids, mask, samples = _two_prompts(model, rng)
    free = model.generate(ids, mask, media=samples, max_new_tokens=4, stop_at_eos=False)
    # Make the first greedy token of row 0 the EOS id: the row must stop there and pad the rest.
    import dataclasses
    eos = int(free[0, 0])
    cfg = dataclasses.replace(model.config, decoder=dataclasses.replace(model.config.decoder, eos_token_id=eos,
                                                                        pad_token_id=0))
    stopped = type(model)(cfg, model.params, model.tokenizer, model.processor).generate(
        ids, mask, media=samples, max_new_tokens=4)
    assert stopped[0, 0] == eos and (stopped[0, 1:] == 0).all()


def test_prompt_longer_than_context_is_a_clear_error(models):
    model = models["v_mistral_clip_stc"]
    n = model.config.decoder.max_position_embeddings
    ids = np.ones((1, n), np.int64)
    with pytest.raises(ContextLengthError, match="exceeds the model's context"):
        model.generate(ids, max_new_tokens=4)


def test_video_without_sound_on_a_model_with_large_audio_patches():
    """The demo's model (BEATs on 64 x 64 fbank patches) answers about a video with no sound: the silent
    stand-in for the missing audio is one patch long, marked absent, and changes nothing."""
    from vllama_jax.config import preset
    from vllama_jax.inference import VideoLLaMA2Model
    from vllama_jax.models.sequence import dummy_batch

    cfg = preset("demo-av")
    params = jax.jit(VideoLLaMA2(cfg).init)(jax.random.PRNGKey(0), dummy_batch(cfg))["params"]
    model = VideoLLaMA2Model(cfg, params)
    v = cfg.vision
    video = np.random.default_rng(0).standard_normal((cfg.num_frames, 3, v.image_size, v.image_size)).astype(np.float32)
    batch = media_batch([{"video": video}], cfg)
    assert batch["audio"].shape[1] >= cfg.audio.input_patch_size and not batch["has_audio"].any()
    ids = np.array([[5, VIDEO_TOKEN_INDEX, 6, 7]])
    out = model.generate(ids, media=[{"video": video}], max_new_tokens=3, stop_at_eos=False)
    assert out.shape == (1, 3)
    # The absent audio is not in the sequence: the same tokens as a batch without any audio array.
    no_audio = {k: batch[k] for k in ("video", "has_video")}
    np.testing.assert_array_equal(model.generate(ids, media=no_audio, max_new_tokens=3, stop_at_eos=False), out)


def _copy_fixture(tmp_path, name="v_mistral_clip_stc"):
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    os.chmod(dst, 0o755)
    for p in dst.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return dst


def _rewrite_weights(folder, edit):
    from safetensors.numpy import load_file, save_file
    sd = load_file(folder / "model.safetensors")
    edit(sd)
    save_file(sd, folder / "model.safetensors")


def test_missing_key_is_named(tmp_path):
    d = _copy_fixture(tmp_path)
    _rewrite_weights(d, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        vllama_jax.load(str(d))


def test_misshaped_key_names_key_and_shapes(tmp_path):
    d = _copy_fixture(tmp_path)
    _rewrite_weights(d, lambda sd: sd.__setitem__("model.mm_projector.readout.0.weight",
                                                  np.zeros((3, 5), np.float32)))
    with pytest.raises(CheckpointError, match=r"readout\.0\.weight.*\(3, 5\)"):
        vllama_jax.load(str(d))


def test_unknown_model_type(tmp_path):
    d = _copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "videollama3_llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="videollama3_llama"):
        vllama_jax.load(str(d))


def test_missing_vision_tower_folder_says_what_to_do(tmp_path):
    d = _copy_fixture(tmp_path, "av_qwen2_clip_stc")
    shutil.rmtree(d / "clip-vit-tiny-patch14-56")
    with pytest.raises(FileNotFoundError, match="mm_vision_tower"):
        vllama_jax.load(str(d))
