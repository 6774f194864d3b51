"""`vllama-jax plan`: a phase's real train step compiled for a TPU slice on this CPU host (libtpu).

Each plan compiles the whole train step with XLA's TPU compiler (~30 s here), so two plans cover the
JSON fields, the HBM table, the sharding, `--hbm-gib` and both model families; the errors need none.
"""
import json

import pytest

from vllama_jax import cli

# libtpu: scripts/test.sh points TPU_LIBRARY_PATH at the copy scripts/setup_env.sh --test installs.

SMALL_TEXT = ["--set", "data.model_max_length=64"]  # compile time grows with the text length


def run_plan(tmp_path, *flags):
    out = tmp_path / "plan.json"
    rc = cli.main(["plan", *flags, *SMALL_TEXT, "--out", str(out)])
    return rc, (json.loads(out.read_text()) if out.exists() else None)


def test_plan_video_model_on_v5p(tmp_path, capsys):
    rc, plan = run_plan(tmp_path, "--phase", "video_finetune", "--preset", "tiny-mistral", "--topology", "v5p:2x2x1",
                        "--mesh", "fsdp=2,tensor=2", "--global-batch", "8")
    assert rc == 0
    assert (plan["phase"], plan["preset"], plan["topology"]) == ("video_finetune", "tiny-mistral", "v5p:2x2x1")
    assert plan["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2, "expert": 1}
    assert (plan["chips"], plan["devices"], plan["device_kind"]) == (4, 4, "TPU v5")
    assert plan["global_batch"] == 8 and plan["text_len"] == 64 and plan["seq_len"] > plan["text_len"]
    assert plan["params"]["trainable"] > 0 and plan["params"]["frozen"] > 0  # the vision tower is frozen
    # v5p from the HBM table: 95 GiB, and a tiny model fits with room to spare.
    assert plan["hbm_per_device_gib"] == 95 and plan["hbm_from"] == "TPU v5"
    assert plan["fits"] is True and 94 < plan["headroom_gib"] < 95
    mem = plan["memory_per_device"]
    # The plan fits by every buffer at once; the compiler's heap simulation (its own peak, buffers with
    # disjoint lifetimes sharing memory) must lie between the arguments alone and that bound.
    assert mem["arguments_bytes"] <= mem["xla_peak_bytes"] <= mem["peak_bytes"]
    assert mem["temporaries_bytes"] > 0 and mem["generated_code_bytes"] > 0
    assert mem["aliased_bytes"] > 0  # the state is donated: its outputs reuse its buffers
    assert mem["peak_gib"] == pytest.approx(mem["peak_bytes"] / 2 ** 30)
    # Sharded over fsdp x tensor = 4: the decoder's params and moments are split 4 ways, the STC
    # connector's convolutions 2 ways (over fsdp); norms and small biases stay whole. The compiled
    # program takes at least that shard (TPU tiles pad a tiny model's small arrays).
    state = plan["state_bytes"]
    assert state["total"] / 4 <= state["per_device"] < 0.7 * state["total"]
    assert plan["batch_bytes"]["per_device"] == plan["batch_bytes"]["total"] // 2  # split over fsdp only
    assert mem["arguments_bytes"] >= state["per_device"] + plan["batch_bytes"]["per_device"]
    # Step time: analytic FLOPs over 4 chips x 459 TFLOP/s at the stated MFU.
    assert plan["assumed_mfu"] == 0.4 and plan["flops_per_step"] > 0
    assert plan["est_step_time_s"] >= plan["flops_per_step"] / (4 * 459e12 * 0.4)
    assert plan["roofline"]["bound"] in ("compute", "memory") and plan["compile_s"] > 0
    table = capsys.readouterr().out
    assert "fits             yes" in table and "v5p:2x2x1" in table


def test_plan_av_model_with_hbm_override_does_not_fit(tmp_path):
    rc, plan = run_plan(tmp_path, "--phase", "audio_pretrain", "--preset", "tiny-av-qwen2", "--topology", "v5e:2x2",
                        "--mesh", "fsdp=4", "--global-batch", "16", "--hbm-gib", "0.001")
    assert rc == 0
    assert plan["device_kind"] == "TPU v5 lite" and plan["mesh"]["fsdp"] == 4
    assert plan["hbm_per_device_gib"] == 0.001 and plan["hbm_from"] == "--hbm-gib"
    assert plan["fits"] is False and plan["headroom_gib"] < 0
    assert plan["params"]["frozen"] > plan["params"]["trainable"] > 0  # only the audio projector trains
    assert plan["seq_len"] > plan["text_len"] + 1  # video and audio tokens spliced in


@pytest.mark.parametrize("flags, named", [
    (["--mesh", "fsdp=3"], ["--mesh", "v5p:2x2x1", "4 devices"]),
    (["--mesh", "fsdp=two"], ["--mesh", "fsdp=two"]),
    (["--mesh", "pipeline=4"], ["--mesh", "pipeline"]),
    (["--preset", "no-such-model"], ["--preset", "no-such-model", "tiny-mistral"]),
    (["--global-batch", "6"], ["--global-batch 6"]),
    (["--global-batch", "lots"], ["--global-batch lots", "auto"]),
    (["--phase", "no_such_phase"], ["--phase no_such_phase", "video_finetune"]),
    (["--topology", "v5p"], ["--topology", "v5p:2x2x2", "cpu:N"]),
])
def test_plan_bad_input_names_the_flag(tmp_path, capsys, flags, named):
    base = {"--phase": "video_finetune", "--preset": "tiny-mistral", "--topology": "v5p:2x2x1", "--mesh": "fsdp=4"}
    base.update(zip(flags[::2], flags[1::2], strict=True))
    rc, plan = run_plan(tmp_path, *[x for flag_value in base.items() for x in flag_value])
    err = capsys.readouterr().err
    assert rc == 2 and plan is None
    for word in named:
        assert word in err


def test_a_mesh_that_does_not_tile_the_torus_still_builds():
    # jax's torus-aware layout has no place for fsdp=32 x tensor=4 on a v6e 8x16 (it raised
    # NotImplementedError from `plan --mesh fsdp=32,tensor=4`); the devices go in order instead.
    from vllama_jax.sharding import make_mesh
    from vllama_jax.train.plan import topology_devices
    devices = topology_devices("v6e:8x16")
    mesh = make_mesh({"fsdp": 32, "tensor": 4}, devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 32, "tensor": 4, "expert": 1}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)
    tiled = make_mesh({"fsdp": 16, "tensor": 8}, devices)  # one that tiles keeps jax's layout
    assert dict(tiled.shape)["tensor"] == 8
