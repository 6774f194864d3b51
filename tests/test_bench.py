"""`vllama-jax bench --quick`: the side-by-side bench runs, and what it writes has the promised structure.

Its agreement figures are parity checks of their own (ours vs transformers on the same weights and
inputs), so they are held to the project's float32 tolerance. Speed is reported, never tested.
"""
import json
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from vllama_jax.cli import main  # noqa: E402

TOL = 1e-4
TIMING_KEYS = {"median_s", "min_s", "runs_s"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--out", str(out), "--quick"]) == 0
    return out, json.loads((out / "bench.json").read_text())


def test_environment_is_recorded(bench):
    env = bench[1]["env"]
    for key in ("device_kind", "platform", "jax", "jaxlib", "flax", "torch", "transformers", "torch_threads",
                "torch_interop_threads", "cpus_available", "torch_device"):
        assert key in env, key
    assert env["torch_threads"] >= 1 and env["cpus_available"] >= 1
    assert bench[1]["settings"]["quick"] is True


def test_every_kind_of_case_ran(bench):
    results = bench[1]["results"]
    kinds = {r["kind"] for r in results}
    assert kinds == {"prefill", "generate", "vision", "decode", "video", "train"}
    assert {r["family"] for r in results if r["kind"] == "prefill"} == {"mistral", "qwen2"}


def test_times_and_ratios(bench):
    for r in bench[1]["results"]:
        assert TIMING_KEYS | {"compile_s"} <= set(r["jax"]), r["name"]
        assert TIMING_KEYS <= set(r["torch"]), r["name"]
        assert len(r["jax"]["runs_s"]) == len(r["torch"]["runs_s"]) == bench[1]["settings"]["repeats"]
        assert all(t > 0 for t in r["jax"]["runs_s"] + r["torch"]["runs_s"]), r["name"]
        # The medians of the recorded runs (numpy's, not the harness's), and the ratio of those.
        jax_median, torch_median = np.median(r["jax"]["runs_s"]), np.median(r["torch"]["runs_s"])
        assert r["jax"]["median_s"] == pytest.approx(jax_median) and r["torch"]["median_s"] == pytest.approx(torch_median)
        assert r["ratio"] == pytest.approx(jax_median / torch_median)
    assert set(bench[1]["summary"]["geomean_ratio"]) == {"prefill", "generate", "vision", "decode", "video", "train",
                                                             "all"}


def test_outputs_agree_with_pytorch(bench):
    for r in bench[1]["results"]:
        a = r["agreement"]
        if r["kind"] in ("generate", "decode"):
            assert a["tokens_equal"] and a["match_fraction"] == 1.0, r["name"]
        else:
            assert a["max_abs_diff"] < TOL, (r["name"], a)
            assert a["ref_max_abs"] > 0.1, (r["name"], a)  # outputs of a real scale, not all near zero


def test_whole_model_cases_agree_with_the_pytorch_videollama2(bench):
    """The 16-frame video prompt through tower, STC connector and decoder, and one fine-tune step of it,
    against transformers' CLIP and Qwen2 with timm's RegStage (benchmarks/torch_reference.py)."""
    rows = {r["kind"]: r for r in bench[1]["results"] if r["kind"] in ("video", "train")}
    video, train = rows["video"], rows["train"]
    assert video["frames"] == train["frames"] == 16
    assert video["seq"] > bench[1]["settings"]["sizes"]["video_text"]  # the video tokens are spliced in
    assert video["agreement"]["of"] == "logits" and video["agreement"]["max_abs_diff"] < TOL
    loss, ref_loss = train["agreement"]["loss"]
    assert abs(loss - ref_loss) < TOL * abs(ref_loss) and ref_loss > 1.0  # random weights: a real loss
    norm, ref_norm = train["agreement"]["grad_norm"]
    assert abs(norm - ref_norm) < TOL * ref_norm and ref_norm > 0.1
    assert train["params_trainable"] > 0


def test_decode_rows_report_rates_and_bandwidth(bench):
    rows = [r for r in bench[1]["results"] if r["kind"] == "decode"]
    assert {r["batch"] for r in rows} == set(bench[1]["settings"]["sizes"]["decode_batches"])
    for r in rows:
        assert len(r["jax_int8"]["runs_s"]) == bench[1]["settings"]["repeats"], r["name"]
        for key in ("jax_tokens_per_s", "torch_tokens_per_s", "int8_tokens_per_s", "speedup_vs_torch",
                    "int8_speedup_vs_float32", "copy_bandwidth_bytes_per_s"):
            assert r[key] > 0, (r["name"], key)
        assert r["jax_tokens_per_s"] == pytest.approx(r["batch"] * r["new_tokens"] / r["jax"]["min_s"])
        # int8 kernels and their scales: a bit over a quarter of the float32 bytes (the embedding stays float).
        b = r["weight_bytes_per_step"]
        assert 0.25 * b["float32"] < b["int8"] < 0.6 * b["float32"], b
        for side, frac in r["bandwidth_fraction"].items():
            assert frac == pytest.approx(b["int8" if side == "jax_int8" else "float32"] * r["new_tokens"]
                                         / r[side if side != "jax_int8" else "jax_int8"]["min_s"]
                                         / r["copy_bandwidth_bytes_per_s"]), side
        assert 0 <= r["agreement"]["int8_match_fraction_vs_float32"] <= 1


def test_plot_written(bench):
    png = bench[0] / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_clear_message_without_torch(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert main(["bench", "--out", str(tmp_path), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "needs torch" in err and "setup_env.sh --test" in err
    assert not (tmp_path / "bench.json").exists()


def test_accelerator_bench_quick_mode_runs(tmp_path):
    """benchmarks/accelerator.py (bfloat16 decode against the chip's bandwidth, meant for a GPU/TPU) on tiny
    sizes here: the script runs, its rows carry both layouts, the plot is written. (Its figures mean nothing
    on a CPU; the README holds those of a GPU run.)"""
    from benchmarks import accelerator
    assert accelerator.main(["--out", str(tmp_path), "--quick", "--plan", "tiny", "--batches", "1"]) == 0
    result = json.loads((tmp_path / "accelerator.json").read_text())
    assert not result["errors"]
    (row,) = result["decode"]
    for layout in accelerator.LAYOUTS:
        assert row[layout]["tokens_per_s"] > 0 and row[layout]["bandwidth_fraction"] > 0
    assert result["limits"]["copy_bandwidth_bytes_per_s"] > 0
    assert (tmp_path / "accelerator.png").exists()


def test_decode_profile_quick_mode_runs(tmp_path):
    """benchmarks/decode_profile.py (a GPU decode traced kernel by kernel) on a tiny decoder here: the script
    runs, times, traces and counts the compiled program's ops, and writes its JSON and the program text."""
    from benchmarks import decode_profile
    assert decode_profile.main(["--out", str(tmp_path), "--quick", "--tag", "t", "--repeats", "1",
                                "--trace-runs", "1"]) == 0
    result = json.loads((tmp_path / "profile-t.json").read_text())
    assert not result["errors"]
    (row,) = result["cases"]
    assert row["tokens_per_s"] > 0 and row["hlo"]["ops"]["fusion"] > 0 and "/host:CPU" in row["trace"]["processes"]
    assert (tmp_path / "hlo-t-tiny-b1.txt").read_text().startswith("HloModule")


def test_decode_kernel_bench_quick_mode_runs(tmp_path):
    """benchmarks/decode_kernel.py (the CPU decode kernel alone, sources compared run by run) on small
    shapes: every row timed for each source, and two builds of the same source agree bit for bit."""
    from benchmarks import decode_kernel
    from vllama_jax import kernels
    if not kernels.usable(np.zeros((), np.float32)):
        pytest.skip("no C++ compiler for the CPU kernel")
    assert decode_kernel.main(["--quick", "--out", str(tmp_path), "--rows", "1", "8",
                               "--sources", kernels._SOURCE, kernels._SOURCE]) == 0
    rows = json.loads((tmp_path / "decode_kernel.json").read_text())["rows"]
    assert [(r["rows"], r["weights"]) for r in rows] == [(1, "float32"), (8, "float32"), (1, "int8"), (8, "int8")]
    for r in rows:
        assert r["bit_identical"] and len(r["sources"]) == 2
        assert all(s["ms"] > 0 and s["gb_per_s"] > 0 for s in r["sources"])
    assert (tmp_path / "decode_kernel.png").exists()


def test_demo_binding_probe_runs_and_names_its_runs(tmp_path):
    """benchmarks/demo_binding.py (where the demo's spatial answers are lost): its run names parse, bad
    ones are refused by name, and a few steps of each token kind train and score by object count."""
    from benchmarks import demo_binding

    assert demo_binding.parse_run("features:0.5:1") == {"name": "features:0.5:1", "tokens": "features",
                                                        "identity": 0.5, "shared": 1.0, "noise": 0.0}
    with pytest.raises(ValueError, match="features:ID"):
        demo_binding.parse_run("features:1")
    results = demo_binding.main(["--out", str(tmp_path), "--steps", "3", "--batch", "4", "pair", "features:1:0:0.5"])
    assert [r["name"] for r in results] == ["pair", "features:1:0:0.5"]
    for r in results:
        assert all(0 <= r[k] <= 1 for k in ("accuracy", "objects1", "objects2", "objects3", "shape_questions"))
    assert (tmp_path / "results.json").is_file()
