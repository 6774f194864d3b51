"""The one device table: peak bf16 FLOP/s, HBM size and bandwidth per JAX device_kind."""
import pytest

from vllama_jax.devices import DEVICES, device_spec, peak_flops


@pytest.mark.parametrize("kind, name, flops, bandwidth, hbm", [
    ("NVIDIA H100 80GB HBM3", "H100", 989e12, 3.35e12, 80),
    ("NVIDIA H200", "H200", 989e12, 4.8e12, 141),
    ("TPU v5", "v5p", 459e12, 2.77e12, 95),  # what JAX calls a v5p
    ("TPU v5 lite", "v5e", 197e12, 0.82e12, 16),
    ("TPU v6 lite", "v6e", 918e12, 1.64e12, 32),
])
def test_known_kinds(kind, name, flops, bandwidth, hbm):
    spec = device_spec(kind)
    assert (spec.name, spec.peak_flops, spec.hbm_bandwidth, spec.hbm_gib) == (name, flops, bandwidth, hbm)
    assert peak_flops(kind) == flops


def test_cpu_and_unknown_kinds_have_no_peak():
    assert device_spec("cpu").peak_flops is None and peak_flops("cpu") is None
    assert device_spec("some new chip") is None and peak_flops("some new chip") is None


def test_specific_names_come_before_their_prefixes():
    # "TPU v5 lite" (v5e) must not be read as "TPU v5" (v5p), nor an H200 as anything else.
    kinds = [d.kind.lower() for d in DEVICES]
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            assert a not in b, f"'{b}' is shadowed by the earlier row '{a}'"


def test_trainer_and_planner_read_this_table():
    from vllama_jax.train import loop, plan
    assert loop.peak_flops is peak_flops
    assert plan.device_spec is device_spec
