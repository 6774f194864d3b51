"""`plan --mesh auto` / `--global-batch auto`: which meshes are tried, how the batch search walks, which
plan is named best. The compile itself is replaced by a fake `plan_phase` here (tests/test_fsdp.py and
tests/test_plan.py compile for real), so these run in milliseconds."""
import pytest

from vllama_jax.train.config import phase_config_path
from vllama_jax.config import preset
from vllama_jax.train import plan_search
from vllama_jax.train.config import load_train_config


def test_mesh_candidates():
    dense = plan_search.mesh_candidates(preset("VideoLLaMA2-7B-16F"), 8)
    assert dense == [{"fsdp": 8}, {"fsdp": 4, "tensor": 2}, {"fsdp": 2, "tensor": 4}, {"fsdp": 1, "tensor": 8},
                     {"data": 2, "fsdp": 4}]
    moe = plan_search.mesh_candidates(preset("VideoLLaMA2-8x7B"), 16)
    assert {"fsdp": 2, "expert": 8} in moe and {"fsdp": 16} in moe
    # Qwen2-7B has 28 heads: no tensor axis of 8.
    assert {"fsdp": 1, "tensor": 8} not in plan_search.mesh_candidates(preset("VideoLLaMA2.1-7B-16F"), 8)


def _fake_plan(max_micro):
    """A plan that fits while the per-device micro-batch is at most `max_micro`, and steps in time
    proportional to the samples per device, faster with a tensor axis (less FSDP gathering)."""
    calls = []

    def plan_phase(cfg, topology, **kw):
        mesh = cfg.mesh.axes()
        batch_devices = mesh["data"] * mesh["fsdp"]
        micro = cfg.train.global_batch_size // cfg.train.grad_accum // batch_devices
        calls.append((dict(mesh), cfg.train.global_batch_size, cfg.train.grad_accum))
        step = cfg.train.global_batch_size / 8 * (0.9 if mesh["tensor"] > 1 else 1.0)
        return {"mesh": mesh, "global_batch": cfg.train.global_batch_size, "grad_accum": cfg.train.grad_accum,
                "fits": micro <= max_micro, "est_step_time_s": step, "memory_per_device": None}
    return plan_phase, calls


@pytest.fixture
def cfg():
    return load_train_config(phase_config_path("video_finetune"),
                             ["model.preset=VideoLLaMA2-7B-16F", "train.global_batch_size=32"])


def test_global_batch_auto_doubles_until_it_does_not_fit(monkeypatch, cfg):
    fake, calls = _fake_plan(max_micro=2)
    monkeypatch.setattr(plan_search, "plan_phase", fake)
    monkeypatch.setattr(plan_search, "topology_devices", lambda t: [None] * 8)
    result = plan_search.search(cfg, "v5p:2x2x2", [{"fsdp": 8}], "auto")
    # micro-batch 1 (32 = 4 x 8 x 1), 2 (accumulation 2), 4 (does not fit): stop.
    assert [c[1:] for c in calls] == [(32, 4), (32, 2), (32, 1)]
    best = result["best"]
    assert best["global_batch"] == 32 and best["grad_accum"] == 2
    assert [r["plan"]["fits"] for r in result["candidates"]] == [True, True, False]


def test_mesh_auto_names_the_fastest_that_fits(monkeypatch, cfg):
    fake, calls = _fake_plan(max_micro=8)
    monkeypatch.setattr(plan_search, "plan_phase", fake)
    monkeypatch.setattr(plan_search, "topology_devices", lambda t: [None] * 8)
    result = plan_search.search(cfg, "v5p:2x2x2", "auto", None)
    assert len(calls) == 5 and all(c[1:] == (32, 1) for c in calls)
    assert result["best"]["mesh"]["tensor"] > 1  # the fake's tensor meshes step faster


def test_mesh_auto_skips_meshes_the_batch_does_not_split_over(monkeypatch, cfg):
    fake, calls = _fake_plan(max_micro=64)
    monkeypatch.setattr(plan_search, "plan_phase", fake)
    monkeypatch.setattr(plan_search, "topology_devices", lambda t: [None] * 64)
    small = load_train_config(phase_config_path("video_finetune"),
                              ["model.preset=VideoLLaMA2-7B-16F", "train.global_batch_size=16"])
    result = plan_search.search(small, "v5p:4x4x4", [{"fsdp": 64}, {"fsdp": 16, "tensor": 4}], None)
    assert result["candidates"][0]["plan"] is None and "does not split" in result["candidates"][0]["error"]
    assert result["best"]["mesh"]["fsdp"] == 16
