"""Connectors (`mm_projector_type`) and the MLP projector against PyTorch references.

References are assembled from timm's `RegStage` (norm LayerNorm2d, act SiLU), torch's Conv3d /
AvgPool3d / SiLU / Linear / GELU, with the original's structure written out independently
(benchmarks/torch_reference.py, which the bench's whole-model reference uses too); their
random state dicts go through OUR key map. The fixtures check the STC connector against the outputs
of the original VideoLLaMA 2 code.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from safetensors.numpy import load_file

from benchmarks.torch_reference import STC_FAMILY, TorchSTC
from vllama_jax.checkpoints.keymap import CheckpointError, to_params
from vllama_jax.config import ConfigError, ConnectorConfig
from vllama_jax.models.connectors import build_connector, connector_key_map, num_connector_tokens

TOL = 1e-4


def torch_mlp(depth, cin, d):
    layers = [torch.nn.Linear(cin, d)]
    for _ in range(depth - 1):
        layers += [torch.nn.GELU(), torch.nn.Linear(d, d)]
    return torch.nn.Sequential(*layers)


def torch_reference(kind, cin, d):
    torch.manual_seed(0)
    if kind in STC_FAMILY:
        m = TorchSTC(kind, cin, d)
    elif kind == "linear":
        m = torch.nn.Linear(cin, d)
    else:
        m = torch_mlp(int(kind[3:-6]), cin, d)
    with torch.no_grad():  # non-trivial norms too (timm initialises them to 1 and 0)
        for name, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("bn.weight") else 0.0))
    return m.eval()


def expected_shapes(module, x):
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    return nn.unbox(variables)["params"]


def load_ours(config, state_dict, x, source):
    module = build_connector(config)
    params = to_params(state_dict, connector_key_map(config), expected_shapes(module, x), source=source)
    return module, params


CASES = [(kind, 32, 64) for kind in ("stc_connector", "stp_connector", "stc_connector_v35",
                                     "mlp2x_gelu", "mlp3x_gelu", "linear")]
CASES += [("spatial_conv", 64, 64), ("spatial_pool", 64, 64)]  # the original builds these at one width only


@pytest.mark.parametrize("t,n", [(4, 16), (5, 25)])  # (5, 25): odd sizes, where floor drops a row
@pytest.mark.parametrize("kind,cin,d", CASES)
def test_connector_matches_torch(kind, cin, d, t, n):
    x = np.random.default_rng(t * n).standard_normal((2, t, n, cin)).astype(np.float32)
    ref = torch_reference(kind, cin, d)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        # The original's temporal_aggregator averages frames before an MLP projector.
        want = (ref(xt) if kind in STC_FAMILY else ref(xt.mean(1))).numpy()
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    config = ConnectorConfig(kind, cin, d)
    module, params = load_ours(config, sd, x, kind)
    got = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
    assert got.shape == want.shape
    assert num_connector_tokens(config, t, n) == want.shape[1]
    err = np.abs(got - want).max()
    assert err <= TOL, f"{kind} T={t} N={n}: max abs error {err}"


@pytest.mark.parametrize("kind", ["mlp2x_gelu", "linear"])
def test_mlp_projects_3d_input_as_is(kind):
    """The audio projector path: (B, L, C) -> (B, L, D), no averaging."""
    x = np.random.default_rng(1).standard_normal((2, 7, 32)).astype(np.float32)
    ref = torch_reference(kind, 32, 48)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    config = ConnectorConfig(kind, 32, 48)
    module, params = load_ours(config, {k: v.numpy() for k, v in ref.state_dict().items()}, x, kind)
    got = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
    assert got.shape == (2, 7, 48)
    assert np.abs(got - want).max() <= TOL


def test_identity():
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 16)).astype(np.float32)
    config = ConnectorConfig("identity", 16, 16)
    assert len(connector_key_map(config)) == 0
    got = np.asarray(build_connector(config).apply({"params": {}}, jnp.asarray(x)))
    np.testing.assert_array_equal(got, x.reshape(2, 12, 16))
    assert num_connector_tokens(config, 3, 4) == 12


def test_released_token_counts():
    """8 frames of 24 x 24 CLIP-336 patches: the counts the docstring gives, and the torch modules' own
    (run at a tiny width: the count does not depend on it)."""
    want = {"stc_connector": 845, "stc_connector_v35": 576, "stp_connector": 576, "spatial_conv": 1690,
            "spatial_pool": 1152, "mlp2x_gelu": 576, "linear": 576}
    for kind, n in want.items():
        assert num_connector_tokens(ConnectorConfig(kind, 1024, 4096), 8, 576) == n, kind
        if kind in STC_FAMILY:
            with torch.no_grad():
                assert TorchSTC(kind, 8, 8)(torch.zeros(1, 8, 576, 8)).shape[1] == n, kind


@pytest.mark.parametrize("name", ["v_mistral_clip_stc", "av_qwen2_clip_stc"])
def test_fixture_projector_out(fixtures_dir, name):
    folder = fixtures_dir / name
    cfg = json.loads((folder / "config.json").read_text())
    expected = np.load(folder / "expected.npz")
    feats = expected["vision_features"]  # (B*T, N, C)
    t = cfg["num_frames"]
    x = feats.reshape(-1, t, *feats.shape[1:])
    prefix = "model.mm_projector."
    sd = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if k.startswith(prefix)}
    config = ConnectorConfig(cfg["mm_projector_type"], cfg["mm_hidden_size"], cfg["hidden_size"])
    module = build_connector(config)
    params = to_params(sd, connector_key_map(config).with_prefix(prefix), expected_shapes(module, x),
                       source=f"{name}/model.safetensors")
    got = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
    want = expected["projector_out"]
    assert got.shape == want.shape
    assert num_connector_tokens(config, t, x.shape[2]) == want.shape[1]
    err = np.abs(got - want).max()
    assert err <= TOL, f"{name}: max abs error {err}"


def test_fixture_audio_projector_loads(fixtures_dir):
    """The av fixture's `mm_projector_a` fits the mlp2x_gelu key map (its values need BEATs features,
    checked with the audio tower)."""
    folder = fixtures_dir / "av_qwen2_clip_stc"
    cfg = json.loads((folder / "config.json").read_text())
    prefix = "model.mm_projector_a."
    sd = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if k.startswith(prefix)}
    config = ConnectorConfig(cfg["mm_projector_a_type"], cfg["mm_hidden_size_a"], cfg["hidden_size_a"])
    x = np.zeros((1, 5, config.in_dim), np.float32)
    module = build_connector(config)
    params = to_params(sd, connector_key_map(config).with_prefix(prefix), expected_shapes(module, x))
    assert module.apply({"params": params}, jnp.asarray(x)).shape == (1, 5, config.out_dim)


def test_unknown_type_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown projector type 'mlp_swish'.*stc_connector.*mlpNx_gelu"):
        ConnectorConfig("mlp_swish", 32, 64)


def test_bad_shapes_are_named():
    config = ConnectorConfig("stc_connector", 32, 64)
    with pytest.raises(ValueError, match=r"\(1, 2, 15, 32\).*15 is not a square"):
        build_connector(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 15, 32)))
    ref = torch_reference("stc_connector", 32, 64)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    del sd["s1.b1.downsample.conv.weight"]
    x = np.zeros((1, 2, 16, 32), np.float32)
    with pytest.raises(CheckpointError, match="s1.b1.downsample.conv.weight"):
        load_ours(config, sd, x, "stc")


@pytest.mark.parametrize("kind", ["mlp2x_gelu", "stc_connector"])
def test_projector_linears_start_as_torch_linear(kind):
    """The projectors' Linear layers start as PyTorch's nn.Linear default (the original builds them when
    training starts, outside transformers' init): weight and bias uniform in +-1/sqrt(fan_in)."""
    from flax import traverse_util

    cin, d = 64, 48
    module = build_connector(ConnectorConfig(kind, cin, d))
    x = jnp.zeros((1, 4, 16, cin), jnp.float32)
    params = traverse_util.flatten_dict(nn.unbox(module.init(jax.random.PRNGKey(0), x)["params"]))
    linears = {k[:-1] for k in params if k[-1] == "kernel" and params[k].ndim == 2 and
               any(p.startswith("fc") for p in k)}
    assert linears
    for path in linears:
        kernel, bias = np.asarray(params[path + ("kernel",)]), np.asarray(params[path + ("bias",)])
        ref = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
        bound = 1 / np.sqrt(kernel.shape[0])
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
        assert abs(kernel.std() / float(ref.weight.detach().std()) - 1) < 0.1, path
        assert abs(bias.std() / float(ref.bias.detach().std()) - 1) < 0.5, path  # 48 values
