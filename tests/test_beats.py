"""BEATs against the original VideoLLaMA 2 code: the `av_qwen2_clip_stc` fixture's audio fbank through
our BEATs and the audio projector (`mlp2x_gelu`) must give the original's `audio_projector_out`, with
the tower's weights read from the checkpoint (`model.audio_tower.*`) and, separately, from the BEATs
`.pt` the checkpoint names; plus the loading rules (the shared relative-position table, errors)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from safetensors.numpy import load_file

from vllama_jax.checkpoints.hf_files import strip_prefix
from vllama_jax.checkpoints.keymap import CheckpointError, flatten, to_params, to_state_dict
from vllama_jax.config import TINY_BEATS, ConnectorConfig
from vllama_jax.models.beats import BEATs, beats_params_from_state_dict, hf_key_map, load_beats
from vllama_jax.models.connectors import build_connector, connector_key_map

TOL = 1e-4
TABLE = "encoder.layers.{}.self_attn.relative_attention_bias.weight"


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    folder = fixtures_dir / "av_qwen2_clip_stc"
    inputs = np.load(folder / "inputs.npz")
    n = int(inputs["batch_size"])
    audio = np.stack([inputs[f"s{i}_audio"] for i in range(n) if str(inputs[f"s{i}_modal"]) in ("av", "audio")])
    return dict(pt=str(folder / "BEATs_tiny.pt"), checkpoint=load_file(str(folder / "model.safetensors")),
                audio=audio, expected=np.load(folder / "expected.npz")["audio_projector_out"])


@pytest.fixture(scope="module")
def pt_state_dict(fixture):
    return {k: v.numpy() for k, v in torch.load(fixture["pt"], map_location="cpu", weights_only=False)["model"].items()}


@pytest.fixture(scope="module")
def tower(fixture):
    config, params_pt = load_beats(fixture["pt"])
    params_ckpt = beats_params_from_state_dict(strip_prefix(fixture["checkpoint"], "model.audio_tower."), config,
                                               "model.safetensors")
    return dict(config=config, params_pt=params_pt, params_ckpt=params_ckpt, apply=jax.jit(BEATs(config).apply))


@pytest.fixture(scope="module")
def projector(fixture, tower):
    config = ConnectorConfig("mlp2x_gelu", tower["config"].encoder_embed_dim, fixture["expected"].shape[-1])
    module = build_connector(config)
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 4, config.in_dim))))["params"]
    params = to_params(strip_prefix(fixture["checkpoint"], "model.mm_projector_a."), connector_key_map(config), shapes,
                       source="model.mm_projector_a")
    return jax.jit(lambda x: module.apply({"params": params}, x))


def test_config_from_the_pt(tower):
    assert tower["config"] == TINY_BEATS


@pytest.mark.parametrize("source", ["params_ckpt", "params_pt"])
def test_audio_projector_out_matches_the_original(fixture, tower, projector, source):
    features = tower["apply"]({"params": tower[source]}, fixture["audio"])
    p = tower["config"].input_patch_size
    assert features.shape == (len(fixture["audio"]), fixture["audio"].shape[1] // p * (128 // p), 64)
    out = np.asarray(projector(features))
    assert out.shape == fixture["expected"].shape
    assert np.max(np.abs(out - fixture["expected"])) < TOL


def test_the_two_weight_sources_agree(tower):
    a, b = flatten(tower["params_pt"]), flatten(tower["params_ckpt"])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _same_params(x, y):
    fx, fy = flatten(x), flatten(y)
    return fx.keys() == fy.keys() and all(np.array_equal(fx[k], fy[k]) for k in fx)


@pytest.mark.parametrize("keep_layer", [0, 1])
def test_the_shared_table_under_one_layer_name(pt_state_dict, tower, keep_layer):
    """A state dict naming the table once, under any layer, loads the same params."""
    sd = {k: v for k, v in pt_state_dict.items() if "relative_attention_bias" not in k}
    sd[TABLE.format(keep_layer)] = pt_state_dict[TABLE.format(0)]
    assert _same_params(beats_params_from_state_dict(sd, tower["config"]), tower["params_pt"])


def test_unequal_table_copies_are_an_error(pt_state_dict, tower):
    sd = dict(pt_state_dict)
    sd[TABLE.format(1)] = sd[TABLE.format(1)] + 1.0
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.1\.self_attn\.relative_attention_bias"):
        beats_params_from_state_dict(sd, tower["config"], "edited.pt")


def test_missing_and_misshapen_keys_are_errors(pt_state_dict, tower):
    sd = dict(pt_state_dict)
    del sd["encoder.layers.1.fc2.weight"]
    with pytest.raises(CheckpointError, match=r"edited\.pt.*encoder\.layers\.1\.fc2\.weight"):
        beats_params_from_state_dict(sd, tower["config"], "edited.pt")
    sd = dict(pt_state_dict)
    sd["encoder.pos_conv.0.weight_v"] = sd["encoder.pos_conv.0.weight_v"][:, :, :-1]
    with pytest.raises(CheckpointError, match=r"encoder\.pos_conv\.0\.weight_v: checkpoint \(64, 16, 15\), model expects \(64, 16, 16\)"):
        beats_params_from_state_dict(sd, tower["config"], "edited.pt")


def test_export_gives_back_the_original_names_and_values(pt_state_dict, tower):
    """Weight norm stays as weight_g / weight_v params, so export is the original state dict again."""
    exported = to_state_dict(tower["params_pt"], hf_key_map(tower["config"]))
    assert set(exported) == set(pt_state_dict)  # the shared table under every layer's name, as the original
    assert all(np.array_equal(exported[k], pt_state_dict[k]) for k in exported)


def test_not_a_beats_pickle_is_an_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="other.pt.*not a BEATs checkpoint"):
        load_beats(str(path))


def test_too_short_fbank_is_an_error(tower):
    with pytest.raises(ValueError, match=r"\(1, 8, 128\)"):
        BEATs(tower["config"]).apply({"params": tower["params_pt"]}, np.zeros((1, 8, 128), np.float32))


def _without_audio_tower_keys(fixtures_dir, folder, keep_pt: bool):
    """The AV fixture as a LoRA fine-tune leaves it: no model.audio_tower.* keys, the BEATs .pt beside."""
    import shutil

    from safetensors.numpy import save_file

    src = fixtures_dir / "av_qwen2_clip_stc"
    skip = {"model.safetensors", "inputs.npz", "expected.npz"} | (set() if keep_pt else {"BEATs_tiny.pt"})
    shutil.copytree(src, folder, ignore=lambda d, names: skip & set(names) if d == str(src) else ())
    sd = load_file(str(src / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if not k.startswith("model.audio_tower.")}, str(folder / "model.safetensors"))
    return folder


def test_audio_tower_from_the_pt_when_the_checkpoint_has_none(fixtures_dir, tmp_path, tower):
    from vllama_jax.loading import read_videollama2

    folder = _without_audio_tower_keys(fixtures_dir, tmp_path / "with_pt", keep_pt=True)
    params = read_videollama2(str(folder)).params
    got, want = flatten(params["audio"]), flatten(tower["params_pt"])
    assert set(got) == set(want)
    for path in want:
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(want[path]), err_msg=str(path))

    folder = _without_audio_tower_keys(fixtures_dir, tmp_path / "without_pt", keep_pt=False)
    with pytest.raises(CheckpointError, match=r"mm_audio_tower 'BEATs_tiny.pt' is not a file"):
        read_videollama2(str(folder))


def test_remat_changes_memory_not_gradients():
    """`remat_policy="full"` (training the tower in audio_finetune / av_joint) recomputes each layer in the
    backward pass: the same loss and gradients as keeping every activation."""
    fbank = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 128)).astype(np.float32))
    params = BEATs(TINY_BEATS).init(jax.random.PRNGKey(0), fbank)["params"]

    def grads(policy):
        loss = lambda p: jnp.sum(BEATs(TINY_BEATS, remat_policy=policy).apply({"params": p}, fbank) ** 2)
        return jax.value_and_grad(loss)(params)

    (l0, g0), (l1, g1) = grads("none"), grads("full")
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(
        BEATs(TINY_BEATS, remat_policy="full").apply({"params": p}, fbank))))(params))
    assert "remat" in jaxpr or "checkpoint" in jaxpr
