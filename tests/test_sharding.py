"""Sharded decoder == unsharded decoder, on 8 simulated CPU devices.

XLA's device count is fixed when jax starts, and other tests in this pytest process have already
started it with one device, so the check runs this file as a script in a fresh process with
`--xla_force_host_platform_device_count=8` and reads back a JSON report.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

TOL = 1e-4
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _random_params(abstract, seed):
    """Unit-scale random weights (init's std 0.02 would make every logit ~0)."""
    import flax.linen as nn
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)
    shapes = nn.unbox(abstract)
    return jax.tree_util.tree_map(
        lambda s: (rng.standard_normal(s.shape) / np.sqrt(s.shape[-1])).astype(np.float32), shapes)


def _spec(array):
    """The PartitionSpec of `array` as a JSON-able list, one entry per dimension."""
    spec = tuple(array.sharding.spec) + (None,) * (array.ndim - len(array.sharding.spec))
    return [list(a) if isinstance(a, tuple) else a for a in spec]


def _check(name, mesh_shape, with_cache):
    """Logits (and, with_cache, a prefill through a sharded KV cache) on `mesh_shape` vs one device."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vllama_jax import sharding
    from vllama_jax.config import TINY_DECODERS
    from vllama_jax.models.decoder import CACHE_AXES, Decoder, abstract_params, init_cache

    cfg = TINY_DECODERS[name]
    model = Decoder(cfg)
    abstract = abstract_params(cfg)
    params = _random_params(abstract, seed=0)
    b, l = 4, 10
    ids = np.random.default_rng(1).integers(3, cfg.vocab_size, (b, l)).astype(np.int32)
    mask = np.ones((b, l), bool)
    mask[1, :3] = False  # left padding
    mask[3, :6] = False

    forward = lambda p, x, m: model.apply({"params": p}, x, attention_mask=m)[0]
    reference = np.asarray(jax.jit(forward)(params, ids, mask))

    mesh = sharding.make_mesh(mesh_shape)
    with sharding.use_mesh(mesh):
        sharded = sharding.shard_params(params, mesh, like=abstract)
        batch = sharding.shard_batch({"ids": ids, "mask": mask}, mesh)
        logits = jax.jit(forward)(sharded, batch["ids"], batch["mask"])
        report = {
            "mesh": dict(mesh.shape),
            "logits_devices": len(logits.sharding.device_set),
            "logits_err": float(np.abs(np.asarray(logits) - reference)[mask].max()),
            "ids_spec": _spec(batch["ids"]),
            "specs": {k: _spec(v) for k, v in {
                "q_proj": sharded["layers"]["self_attn"]["q_proj"]["kernel"],
                "embedding": sharded["embed_tokens"]["embedding"],
                "experts_w1": sharded["layers"].get("block_sparse_moe", {}).get("experts", {}).get("w1"),
            }.items() if v is not None},
        }
        if with_cache:
            cache = init_cache(cfg, b, l + 2)
            cache_sharding = sharding.named_sharding(mesh, CACHE_AXES, cache["k"].shape)
            cache = jax.device_put(cache, cache_sharding)
            slot_mask = np.concatenate([mask, np.zeros((b, 2), bool)], axis=1)
            prefill = jax.jit(lambda p, x, c: model.apply({"params": p}, x, attention_mask=slot_mask, cache=c,
                                                          cache_index=jnp.int32(0)))
            cached_logits, new_cache = prefill(sharded, batch["ids"], cache)
            report["cache_spec"] = _spec(new_cache["k"])
            report["cache_err"] = float(np.abs(np.asarray(cached_logits) - reference)[mask].max())
        if name == "mistral":
            # Initialised straight into the sharded layout.
            init = sharding.sharded_init(model, jax.random.key(0), jnp.zeros((b, l), jnp.int32), mesh=mesh)
            report["init_q_spec"] = _spec(init["layers"]["self_attn"]["q_proj"]["kernel"])
    return report


def main():
    reports = {
        "mistral": _check("mistral", {"data": 2, "fsdp": 2, "tensor": 2}, with_cache=True),
        "mixtral": _check("mixtral", {"fsdp": 2, "tensor": 2, "expert": 2}, with_cache=False),
    }
    print("REPORT " + json.dumps(reports))


@pytest.fixture(scope="module")
def reports():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sharding check failed:\n{proc.stderr[-4000:]}"
    line = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def test_mesh_data_fsdp_tensor(reports):
    r = reports["mistral"]
    assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2, "expert": 1}
    assert r["logits_devices"] == 8
    assert r["logits_err"] < TOL, r
    # Weights are really split: embed over fsdp, heads / vocab over tensor; the batch over data x fsdp.
    assert r["specs"]["q_proj"] == [None, "fsdp", "tensor"]  # (layers, embed, heads)
    assert r["specs"]["embedding"] == ["tensor", "fsdp"]
    assert r["ids_spec"] == [["data", "fsdp"], None]
    assert r["init_q_spec"] == r["specs"]["q_proj"]


def test_sharded_kv_cache(reports):
    r = reports["mistral"]
    assert r["cache_spec"] == [None, ["data", "fsdp"], None, "tensor", None]
    assert r["cache_err"] < TOL, r


def test_mesh_with_expert_axis(reports):
    r = reports["mixtral"]
    assert r["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2, "expert": 2}
    assert r["logits_devices"] == 8
    assert r["logits_err"] < TOL, r
    assert r["specs"]["experts_w1"] == [None, "expert", "fsdp", "tensor"]


def test_make_mesh_fills_the_free_axis():
    # Runs in this process (1 device): -1 takes what is left, wrong products are named.
    import jax

    from vllama_jax.sharding import make_mesh

    mesh = make_mesh({"data": -1})
    assert dict(mesh.shape) == {"data": len(jax.devices()), "fsdp": 1, "tensor": 1, "expert": 1}
    with pytest.raises(ValueError, match="needs 4 devices"):
        make_mesh({"data": 2, "tensor": 2}, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="unknown mesh axes"):
        make_mesh({"model": 2})


if __name__ == "__main__":
    main()
