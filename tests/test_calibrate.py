"""The demo's tower calibration (vllama_jax/demo/calibrate.py): folded into the weights, it must make the
towers' own forward pass hand on centred vision features and standardised BEATs features over the
calibration clips, and change nothing else; `zero_init_last` must make each connector block start as its
shortcut."""
import jax
import numpy as np
import pytest
from flax import traverse_util
import flax.linen as nn

from vllama_jax.config import preset
from vllama_jax.demo.calibrate import (BEATS_LAST_NORM, VISION_FC2_BIAS, calibrate_towers, feature_layer,
                                       tower_stats)
from vllama_jax.models.sequence import dummy_batch
from vllama_jax.models.videollama2 import VideoLLaMA2


def _batches(cfg, rng, n=2, b=3):
    v = cfg.vision
    out = []
    for _ in range(n):
        video = rng.normal(size=(b, cfg.num_frames, 3, v.image_size, v.image_size)).astype(np.float32)
        audio = rng.normal(size=(b, 256, 128)).astype(np.float32) * 4 - 10
        out.append({"video": video, "audio": audio, "has_video": np.ones(b, bool),
                    "has_audio": np.array([True] * (b - 1) + [False])})
    return out


@pytest.mark.parametrize("name", ["demo-av", "tiny-av-qwen2"])  # select_layer -1 and -2
def test_calibrated_towers_hand_on_centred_features(name):
    cfg = preset(name)
    model = VideoLLaMA2(cfg)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), dummy_batch(cfg))["params"])
    batches = _batches(cfg, np.random.default_rng(0))
    before = tower_stats(model, params, batches)
    # A random tower's features carry a large shared component: what calibration removes.
    assert np.abs(before["vision_mean"]).max() > 0.05
    new = calibrate_towers(model, params, batches)
    after = tower_stats(model, new, batches)
    scale = np.sqrt(np.mean(before["vision_mean"] ** 2)) + 1.0
    assert np.abs(after["vision_mean"]).max() < 1e-5 * scale
    np.testing.assert_allclose(after["audio_mean"], 0, atol=1e-5)
    np.testing.assert_allclose(after["audio_std"], 1, rtol=1e-4)
    # Only the two folded tensors change, and only in the layer that makes the features.
    flat0, flat1 = traverse_util.flatten_dict(params), traverse_util.flatten_dict(new)
    changed = {k for k in flat0 if not np.array_equal(np.asarray(flat0[k]), np.asarray(flat1[k]))}
    assert changed == {VISION_FC2_BIAS, BEATS_LAST_NORM + ("scale",), BEATS_LAST_NORM + ("bias",)}
    layer = feature_layer(cfg.vision.num_layers, cfg.vision.select_layer)
    others = [i for i in range(cfg.vision.num_layers) if i != layer]
    np.testing.assert_array_equal(np.asarray(flat0[VISION_FC2_BIAS])[others], np.asarray(flat1[VISION_FC2_BIAS])[others])


def test_rows_without_audio_do_not_count():
    cfg = preset("demo-av")
    model = VideoLLaMA2(cfg)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), dummy_batch(cfg))["params"])
    batches = _batches(cfg, np.random.default_rng(1))
    kept = [{"video": b["video"], "audio": b["audio"][b["has_audio"]]} for b in batches]
    for b in batches:
        b["audio"][~b["has_audio"]] = 1e3  # garbage in the rows marked absent
    a, k = tower_stats(model, params, batches), tower_stats(model, params, kept)
    np.testing.assert_allclose(a["audio_mean"], k["audio_mean"], rtol=1e-6)
    np.testing.assert_allclose(a["audio_std"], k["audio_std"], rtol=1e-6)


def test_feature_layer():
    assert feature_layer(4, -1) == 3 and feature_layer(4, -2) == 2 and feature_layer(4, 4) == 3
    with pytest.raises(ValueError, match="select_layer 0"):
        feature_layer(4, 0)


def test_zero_init_last_starts_each_connector_block_as_its_shortcut():
    from vllama_jax.demo.calibrate import zero_init_last
    from vllama_jax.layers.regstage import Bottleneck

    cfg = preset("demo-av")
    model = VideoLLaMA2(cfg)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), dummy_batch(cfg))["params"])
    new = zero_init_last(params)
    flat0, flat1 = traverse_util.flatten_dict(params), traverse_util.flatten_dict(new)
    changed = {k for k in flat0 if not np.array_equal(np.asarray(flat0[k]), np.asarray(flat1[k]))}
    assert changed and all(k[0] == "connector" and k[-3:] == ("conv3", "norm", "scale") for k in changed)
    assert len(changed) == 8  # s1 and s2: four blocks each
    assert all(not np.asarray(flat1[k]).any() for k in changed)
    # A block whose last norm scale is zero hands on SiLU(shortcut).
    block = Bottleneck(16)
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 16)).astype(np.float32)
    p = nn.unbox(block.init(jax.random.PRNGKey(1), x)["params"])
    p0 = zero_init_last({"connector": p})["connector"]
    np.testing.assert_allclose(np.asarray(block.apply({"params": p0}, x)), np.asarray(jax.nn.silu(x)), atol=1e-6)
    assert not np.allclose(np.asarray(block.apply({"params": p}, x)), np.asarray(jax.nn.silu(x)), atol=1e-3)
