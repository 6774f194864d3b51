"""FSDP shards everything that grows with the model, the STC connector's convolutions included.

On simulated CPU devices (`plan --topology cpu:N`: XLA's CPU compiler, no libtpu): a model whose
connector is most of its state ("tiny-wide": the tiny preset with a 512-wide decoder and connector)
has its per-device argument bytes halved when fsdp doubles at a fixed per-device batch; frozen parts
carry no optimizer state; the connector sharded over 8 devices computes what it computes on one.
XLA's device count is fixed when jax starts, so the checks run this file as a script in a fresh
process with 8 host devices (as tests/test_sharding.py) and read back a JSON report.
"""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

# Two CPU compiles of the train step and one of the connector: 2 to 5 min on a busy 2-core host.
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
WIDE = "tiny-wide"
WIDTH = 512
# Compile time grows with the text length; fast_compile halves CPU compile times (the sizes are the same).
SMALL = ["data.model_max_length=64", "train.fast_compile=true"]


def _register_wide_preset():
    """tiny-mistral with a decoder and connector WIDTH wide: the connector (~30 WIDTH^2 params, the 8
    WIDTH^2 sampler and the RegStages' WIDTH x WIDTH convs) is most of the trainable state, as in 72B."""
    from vllama_jax import config as C
    base = C.PRESETS["tiny-mistral"]
    decoder = dataclasses.replace(base.decoder, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_heads=8,
                                  num_kv_heads=4)
    C.PRESETS[WIDE] = dataclasses.replace(base, decoder=decoder,
                                          connector=dataclasses.replace(base.connector, out_dim=WIDTH))


def _plan(devices, batch, tmp):
    """`vllama-jax plan --topology cpu:N` of the wide preset, as a user runs it; the JSON it writes."""
    from vllama_jax import cli
    out = os.path.join(tmp, f"plan{devices}.json")
    flags = ["--phase", "video_finetune", "--preset", WIDE, "--topology", f"cpu:{devices}", "--mesh", f"fsdp={devices}",
             "--global-batch", str(batch), "--out", out]
    assert cli.main(["plan", *flags, *[x for kv in SMALL for x in ("--set", kv)]]) == 0
    with open(out) as f:
        return json.load(f)


def _connector_check():
    """The STC connector's output with its params sharded by the rules on fsdp=8 == on one device."""
    import flax.linen as nn
    import jax
    import numpy as np

    from vllama_jax import sharding
    from vllama_jax.config import preset
    from vllama_jax.models.connectors import build_connector

    cfg = preset(WIDE).connector
    model = build_connector(cfg)
    x = np.random.default_rng(0).standard_normal((8, 2, 16, cfg.in_dim)).astype(np.float32)  # (B, T, N, C)
    boxed = model.init(jax.random.key(0), x)["params"]
    params = nn.unbox(boxed)
    reference = np.asarray(jax.jit(model.apply)({"params": params}, x))
    mesh = sharding.make_mesh({"fsdp": 8})
    with sharding.use_mesh(mesh):
        sharded = sharding.shard_params(params, mesh, like=boxed)
        out = jax.jit(model.apply)({"params": sharded}, sharding.shard_batch({"x": x}, mesh)["x"])
    spec = lambda a: [list(s) if isinstance(s, tuple) else s  # noqa: E731
                      for s in tuple(a.sharding.spec) + (None,) * (a.ndim - len(a.sharding.spec))]
    return {
        "err": float(np.abs(np.asarray(out) - reference).max()),
        "scale": float(np.abs(reference).max()),
        "sampler": spec(sharded["sampler"]["kernel"]),
        "s2_conv1": spec(sharded["s2"]["b1"]["conv1"]["conv"]["kernel"]),
        "depthwise": spec(sharded["s2"]["b1"]["conv2"]["conv"]["kernel"]),
        "readout": spec(sharded["readout"]["fc1"]["kernel"]),
    }


def _fallback_check():
    """Indivisible dims: the next rule for the name, else whole; never an error."""
    import jax

    from vllama_jax import sharding
    mesh = sharding.make_mesh({"fsdp": 8}, devices=jax.devices()[:8])
    conv = ("conv_h", "conv_w", "conv_in", "conv_out")
    return {
        "out_divides": list(sharding.param_spec(conv, (3, 3, 16, 64), mesh)),
        "in_only": list(sharding.param_spec(conv, (3, 3, 16, 12), mesh)),  # 12 output channels: not over 8
        "neither": list(sharding.param_spec(conv, (14, 14, 3, 12), mesh)),
        "embed": list(sharding.param_spec(("vocab", "embed"), (300, 64), mesh)),
    }


def main():
    _register_wide_preset()
    with tempfile.TemporaryDirectory() as tmp:
        four, eight = _plan(4, 4, tmp), _plan(8, 8, tmp)
    report = {"connector": _connector_check(), "fallback": _fallback_check()}
    for name, plan in (("fsdp4", four), ("fsdp8", eight)):
        report[name] = {k: plan[k] for k in ("memory_per_device", "state_bytes", "batch_bytes", "params", "fits",
                                             "device_kind", "devices", "mesh", "est_step_time_s")}
    print("REPORT " + json.dumps(report))


@pytest.fixture(scope="module")
def report():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"fsdp check failed:\n{proc.stderr[-4000:]}"
    line = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def test_cpu_topology_plans(report):
    r = report["fsdp8"]
    assert r["device_kind"] == "cpu" and r["devices"] == 8
    assert r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1, "expert": 1}
    # No HBM size and no peak are known for host devices: the plan says so instead of guessing.
    assert r["fits"] is None and r["est_step_time_s"] is None
    assert r["memory_per_device"]["arguments_bytes"] > 0


def test_argument_bytes_halve_when_fsdp_doubles(report):
    a4 = report["fsdp4"]["memory_per_device"]["arguments_bytes"]
    a8 = report["fsdp8"]["memory_per_device"]["arguments_bytes"]
    # The per-device batch is fixed (1 sample), so only the state can shrink; it is ~all of the bytes.
    assert report["fsdp4"]["batch_bytes"]["per_device"] == report["fsdp8"]["batch_bytes"]["per_device"]
    assert 1.8 <= a4 / a8 <= 2.2, (a4, a8)
    state4, state8 = report["fsdp4"]["state_bytes"], report["fsdp8"]["state_bytes"]
    assert state4["total"] == state8["total"]
    assert 1.9 <= state4["per_device"] / state8["per_device"] <= 2.0, (state4, state8)


def test_frozen_parts_carry_no_optimizer_state(report):
    # float32 params (4 bytes each) + two Adam moments (8 bytes) for trainable params only, plus a few
    # scalars (step, rng, counters): a moment for the frozen vision tower would add 8 bytes per param.
    params, state = report["fsdp8"]["params"], report["fsdp8"]["state_bytes"]["total"]
    assert params["frozen"] > 0
    expected = 4 * (params["trainable"] + params["frozen"]) + 8 * params["trainable"]
    assert expected <= state <= expected + 128, (state, expected)


def test_sharded_connector_equals_unsharded(report):
    c = report["connector"]
    assert c["err"] < 1e-4, c  # float32, as tests/test_sharding.py
    # Its convolutions are split over fsdp, on their output channels (the depthwise conv too).
    assert c["sampler"] == [None, None, None, None, "fsdp"]  # (t, h, w, in, out)
    assert c["s2_conv1"] == [None, None, None, "fsdp"]
    assert c["depthwise"] == [None, None, None, "fsdp"]
    assert c["readout"] == ["fsdp", "tensor"]  # (embed, mlp)


def test_indivisible_dims_fall_back(report):
    f = report["fallback"]
    assert f["out_divides"] == [None, None, None, "fsdp"]
    assert f["in_only"] == [None, None, "fsdp", None]
    assert f["neither"] == [None, None, None, None]
    assert f["embed"] == ["tensor", "fsdp"]


if __name__ == "__main__":
    main()
