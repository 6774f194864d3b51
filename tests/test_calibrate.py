"""The demo's tower calibration (vllama_jax/demo/calibrate.py): folded into the weights, it must make the
towers' own forward pass hand on centred vision features and standardised BEATs features over the
calibration clips, and change nothing else; `zero_init_last` must make each connector block start as its
shortcut; `standardise_connector` must make the connector's linear maps read zero-mean, unit-variance
inputs (exactly the projector on standardised features, for a Linear)."""
import math

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


def _stages(model, params, video):
    """The STC's stage outputs, captured by Flax (s1: (B, T, h, w, C) as the sampler reads it; s2: (B, tokens, D)
    as the readout reads it)."""
    _, state = model.apply({"params": params}, video, method=lambda m, v: m.encode_video(v),
                           capture_intermediates=True, mutable=["intermediates"])
    c = state["intermediates"]["connector"]
    b, t = video.shape[:2]
    s1, s2 = (np.asarray(c[k]["__call__"][0], np.float64) for k in ("s1", "s2"))
    return s1.reshape((b, t) + s1.shape[1:]), s2.reshape(b, -1, s2.shape[-1])


def _standardised(x):
    flat = x.reshape(-1, x.shape[-1])
    return (x - flat.mean(0)) / flat.std(0)


def test_standardised_stc_reads_its_stages_standardised():
    """The STC's sampler with folded weights reads s1's output as the original sampler reads it standardised
    per channel (exact wherever its window misses the zero padding), and the folded readout reads s2's
    output so (exact); rows without video do not count, and nothing else changes."""
    from vllama_jax.demo.calibrate import standardise_connector, zero_init_last
    from vllama_jax.layers.conv import Conv
    from vllama_jax.models.connectors import MLPProjector, READOUT_DEPTH

    cfg = preset("demo-av")
    model = VideoLLaMA2(cfg)
    params = zero_init_last(nn.unbox(model.init(jax.random.PRNGKey(0), dummy_batch(cfg))["params"]))
    batches = _batches(cfg, np.random.default_rng(2))
    batches[0]["has_video"][1] = False
    batches[0]["video"][1] = 1e3  # a row without video must not count
    new = standardise_connector(model, params, batches)
    video = np.concatenate([b["video"][b["has_video"]] for b in batches])

    x, _ = _stages(model, params, video)
    spec, d = cfg.connector.spec, cfg.connector.out_dim
    sampler = Conv(d, spec.downsample, strides=spec.downsample, padding=spec.padding, use_bias=True)
    got = np.asarray(sampler.apply({"params": new["connector"]["sampler"]}, x.astype(np.float32)))
    want = np.asarray(sampler.apply({"params": params["connector"]["sampler"]}, _standardised(x).astype(np.float32)))
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))  # windows that read no padding
    np.testing.assert_allclose(got[inner], want[inner], rtol=1e-4, atol=1e-4)
    assert not np.allclose(got[inner], np.asarray(sampler.apply({"params": params["connector"]["sampler"]},
                                                                 x.astype(np.float32)))[inner], atol=1e-2)

    _, y = _stages(model, new, video)
    readout = MLPProjector(READOUT_DEPTH, d)
    got = np.asarray(readout.apply({"params": new["connector"]["readout"]}, y.astype(np.float32)))
    want = np.asarray(readout.apply({"params": params["connector"]["readout"]}, _standardised(y).astype(np.float32)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    flat0, flat1 = traverse_util.flatten_dict(params), traverse_util.flatten_dict(new)
    changed = {k for k in flat0 if not np.array_equal(np.asarray(flat0[k]), np.asarray(flat1[k]))}
    assert changed == {("connector",) + p + (w,) for p in (("sampler",), ("readout", "fc1")) for w in ("kernel", "bias")}


def test_standardised_mean_pool_projector_is_the_projector_on_standardised_features():
    """The fold is exact for a Linear: the projector with folded weights equals the original projector
    applied to the frame-averaged tower features standardised per channel (computed here in numpy)."""
    from vllama_jax.demo.calibrate import standardise_connector

    cfg = preset("demo-av-meanpool")
    model = VideoLLaMA2(cfg)
    params = nn.unbox(model.init(jax.random.PRNGKey(3), dummy_batch(cfg))["params"])
    batches = _batches(cfg, np.random.default_rng(4))
    new = standardise_connector(model, params, batches)
    video = np.concatenate([b["video"] for b in batches])
    b, t = video.shape[:2]
    feats = np.asarray(model.apply({"params": params}, video.reshape((b * t,) + video.shape[2:]),
                                   method=lambda m, x: m.vision.features(x)), np.float64)
    pooled = feats.reshape((b, t) + feats.shape[1:]).mean(1)  # (B, P, C)
    flat = pooled.reshape(-1, pooled.shape[-1])
    z = (pooled - flat.mean(0)) / flat.std(0)
    fc1, fc2 = (np.asarray(params["connector"][k]["kernel"], np.float64) for k in ("fc1", "fc2"))
    b1, b2 = (np.asarray(params["connector"][k]["bias"], np.float64) for k in ("fc1", "fc2"))
    h = z @ fc1 + b1
    expected = (0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))) @ fc2 + b2
    got = np.asarray(model.apply({"params": new}, video, method=lambda m, v: m.encode_video(v)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
