"""Training: config, optimizer masking, gradient accumulation, and real runs of `vllama-jax train`.

The runs use launch/configs/smoke.yaml with the tiny video model (tiny-mistral) instead of the
audio-visual one, whose 1500 audio tokens make CPU steps slow; everything else is the smoke run:
generated mp4/jpg data mixed with a file of bad rows, the real train step, Orbax checkpoints. They are
subprocesses sharing a persistent XLA compilation cache, so a program compiles once per session.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from vllama_jax.config import IGNORE_INDEX, DecoderConfig
from vllama_jax.train.config import TrainConfig, TrainConfigError, from_dict, load_train_config
from vllama_jax.train.metrics import read_metrics
from vllama_jax.train.optimizer import lr_schedule, make_optimizer, trainable_mask
from vllama_jax.train.step import make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "launch", "configs", "smoke.yaml")
FIXTURE = os.path.join(REPO, "tests", "data", "fixtures", "v_mistral_clip_stc")
STEPS = 8
RESUME_AT = 4  # a checkpoint step (checkpoint.every)


# ----------------------------------------------------------------------------------------------------
# Helpers shared with test_multihost.py
# ----------------------------------------------------------------------------------------------------

def smoke_overrides(base, out_dir, **changes):
    """--set arguments: the smoke config on tiny-mistral, the session's generated data, `out_dir`."""
    sets = {
        "output_dir": out_dir,
        "model.preset": "tiny-mistral",
        "data.folder": os.path.join(base, "smoke_data"),
        "data.synthetic_samples": 12,
        "data.annotations": "[{path: train.json, weight: 3.0}, {path: bad.jsonl, weight: 1.0}]",
        "data.tokenizer": FIXTURE,
        "data.processor": os.path.join(FIXTURE, "clip-vit-tiny-patch14-56"),
        "optimizer.trainable": "[connector, decoder]",
        "train.steps": STEPS,
        "train.fast_compile": "true",
        "train.progress_bar": "false",
        "checkpoint.every": RESUME_AT,
        **changes,
    }
    return [f"{k}={v}" for k, v in sets.items()]


def train_env(base, devices=1):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_COMPILATION_CACHE_DIR=os.path.join(base, "xla_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def train_command(overrides, extra=()):
    cmd = [sys.executable, "-m", "vllama_jax", "train", "--config", SMOKE, *extra]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def run_train(base, out_dir, devices=1, extra=(), **changes):
    """Run one training subprocess to the end; returns {step: metrics row}."""
    proc = subprocess.run(train_command(smoke_overrides(base, out_dir, **changes), extra), cwd=REPO,
                          env=train_env(base, devices), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return read_metrics(out_dir)


def losses(metrics, steps=None):
    return np.array([metrics[s]["loss"] for s in (steps or sorted(metrics))])


def straight_run(base):
    """The reference: one process, one device, STEPS steps; run once per session."""
    out = os.path.join(base, "straight")
    if not os.path.exists(os.path.join(out, "checkpoints", str(STEPS))):
        run_train(base, out)
    return out, read_metrics(out)


def resume_copy(run_dir, out, step):
    """A new run folder holding only checkpoint `step` of `run_dir`: starting there resumes from it."""
    shutil.copytree(os.path.join(run_dir, "checkpoints", str(step)), os.path.join(out, "checkpoints", str(step)))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp())  # shared by the session: data and compilation cache


@pytest.fixture(scope="module")
def straight(base):
    return straight_run(base)


# ----------------------------------------------------------------------------------------------------
# Config, optimizer, step (in process, tiny stand-in model)
# ----------------------------------------------------------------------------------------------------

def test_config_overrides_and_errors(tmp_path):
    cfg = load_train_config(SMOKE, ["train.steps=7", "mesh.fsdp=2", "optimizer.learning_rate=2e-5",
                                    "data.annotations=[{path: a.json, weight: 2}]"])
    assert cfg.train.steps == 7 and cfg.mesh.fsdp == 2 and cfg.optimizer.learning_rate == 2e-5
    assert cfg.data.annotations[0].path == "a.json" and cfg.data.annotations[0].weight == 2.0
    assert dataclasses.is_dataclass(cfg) and cfg.model.preset == "tiny-av-qwen2"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3
    for bad, message in (("train.stepz=3", "unknown key.*stepz"), ("train.steps=fast", "train.steps: expected int"),
                         ("train.grad_accum=3", "not a multiple of train.grad_accum"), ("train.steps", "key=value")):
        with pytest.raises(TrainConfigError, match=message):
            load_train_config(SMOKE, [bad])
    assert from_dict(TrainConfig, yaml.safe_load(cfg.to_yaml())) == cfg  # what a run records
    for name in ("video_pretrain", "video_finetune", "audio_pretrain", "audio_finetune", "av_joint"):
        load_train_config(os.path.join(REPO, "launch", "configs", f"{name}.yaml"))


class TinyLM(nn.Module):
    """A stand-in with the model's batch -> outputs contract: a frozen `vision` table and a `decoder`."""

    @nn.compact
    def __call__(self, batch):
        ids = batch["input_ids"]
        x = nn.Embed(50, 8, name="vision")(ids)
        logits = nn.Dense(50, name="decoder")(jnp.tanh(x))
        return {"logits": logits, "labels": batch["labels"], "attention_mask": batch["attention_mask"]}


def _tiny_setup(accum, steps=3):
    model = TinyLM()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (4, 6)).astype(np.int32)
    labels = np.where(rng.random((4, 6)) < 0.3, IGNORE_INDEX, ids).astype(np.int32)  # uneven token counts
    batch = {"input_ids": ids, "labels": labels, "attention_mask": np.ones((4, 6), bool), "bad": np.zeros(4, bool)}
    params = model.init(jax.random.PRNGKey(0), batch)["params"]
    mask = trainable_mask(params, ["decoder"])
    cfg = load_train_config(SMOKE, ["optimizer.learning_rate=0.1", "optimizer.warmup_ratio=0.0"])
    tx = make_optimizer(cfg.optimizer, steps, mask)
    step = jax.jit(make_train_step(model, tx, mask, lr_schedule(0.1, steps, 0.0), grad_accum=accum))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0), "rng": jax.random.PRNGKey(1),
             "bad_samples": jnp.int32(0)}
    return step, state, batch


def test_frozen_params_get_no_optimizer_state_and_do_not_move():
    step, state, batch = _tiny_setup(accum=1)
    moments = [x for x in jax.tree_util.tree_leaves(state["opt_state"]) if np.ndim(x) > 0]
    assert sum(x.size for x in moments) == 2 * (8 * 50 + 50)  # Adam mu + nu of the decoder only
    before = jax.device_get(state["params"])
    for _ in range(3):
        state, metrics = step(state, batch)
    after = jax.device_get(state["params"])
    np.testing.assert_array_equal(after["vision"]["embedding"], before["vision"]["embedding"])
    assert not np.allclose(after["decoder"]["kernel"], before["decoder"]["kernel"])
    assert int(metrics["target_tokens"]) == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def test_gradient_accumulation_is_the_full_batch_gradient():
    results = []
    for accum in (1, 2, 4):
        step, state, batch = _tiny_setup(accum)
        for _ in range(2):
            state, metrics = step(state, batch)
        results.append((float(metrics["loss"]), float(metrics["grad_norm"]), jax.device_get(state["params"])))
    for loss, norm, params in results[1:]:
        assert abs(loss - results[0][0]) < 1e-5 and abs(norm - results[0][1]) < 1e-5
        np.testing.assert_allclose(params["decoder"]["kernel"], results[0][2]["decoder"]["kernel"], atol=1e-6)


def test_schedule_is_warmup_then_cosine():
    s = lr_schedule(1e-3, 100, 0.03)  # ceil(3) warmup steps, as the HF Trainer
    assert float(s(0)) == 0.0 and abs(float(s(3)) - 1e-3) < 1e-9
    assert abs(float(s(3 + 97 // 2)) - 0.5e-3) < 2e-5 and float(s(100)) < 1e-9


def test_mfu_table_and_flops():
    from vllama_jax.config import PRESETS
    from vllama_jax.devices import peak_flops
    from vllama_jax.train.flops import train_step_flops
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("TPU v5 lite") == 197e12
    assert peak_flops("TPU v5") == 459e12 and peak_flops("cpu") is None
    cfg = PRESETS["VideoLLaMA2-7B"]
    counts = {"decoder": 7_000_000_000, "vision": 300_000_000, "connector": 50_000_000}
    frozen = train_step_flops(cfg, counts, {"connector": True}, batch=1, seq_len=1000)
    full = train_step_flops(cfg, counts, {"connector": True, "decoder": True}, batch=1, seq_len=1000)
    assert 4 * 7e9 * 1000 < frozen < full and abs(full - frozen - 2 * 7e9 * 1000) < 1  # decoder weight grads


# ----------------------------------------------------------------------------------------------------
# Real runs
# ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smoke_run_learns_and_reports_bad_rows(straight):
    out, metrics = straight
    assert sorted(metrics) == list(range(1, STEPS + 1))
    loss = losses(metrics)
    assert np.isfinite(loss).all() and loss[-3:].mean() < loss[:3].mean() - 0.5, loss
    assert metrics[STEPS]["bad_samples_total"] > 0  # bad.jsonl rows were met, skipped and counted
    assert all(metrics[s]["tokens_per_s"] > 0 and metrics[s]["lr"] >= 0 for s in metrics)
    assert sorted(os.listdir(os.path.join(out, "checkpoints")), key=int) == [str(RESUME_AT), str(STEPS)]  # keep 2
    assert any(name.startswith("events") for name in os.listdir(os.path.join(out, "tensorboard")))
    assert load_train_config(os.path.join(out, "config.yaml")).train.steps == STEPS


@pytest.mark.slow
def test_interrupted_run_resumes_with_the_same_losses(base, straight):
    # What a run killed during step RESUME_AT + 2, in the middle of saving it, leaves behind: the last
    # finalized checkpoint and Orbax's temporary folder of the unfinished save, which must be ignored.
    out = resume_copy(straight[0], os.path.join(base, "interrupted"), RESUME_AT)
    os.makedirs(os.path.join(out, "checkpoints", f"{RESUME_AT + 2}.orbax-checkpoint-tmp-1234", "params"))
    resumed = run_train(base, out)  # the same command as the straight run: resumes from the checkpoint
    assert sorted(resumed) == list(range(RESUME_AT + 1, STEPS + 1))
    np.testing.assert_allclose(losses(resumed), losses(straight[1], list(range(RESUME_AT + 1, STEPS + 1))),
                               rtol=0, atol=1e-6)
    assert resumed[STEPS]["bad_samples_total"] == straight[1][STEPS]["bad_samples_total"]  # kept in the state


@pytest.mark.slow
def test_eight_devices_give_the_single_device_losses(base, straight):
    # The single-device run's checkpoint, resharded onto data 2 x fsdp 2 x tensor 2, continues as it did.
    out = resume_copy(straight[0], os.path.join(base, "eight"), RESUME_AT)
    metrics = run_train(base, out, devices=8, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
    later = list(range(RESUME_AT + 1, STEPS + 1))
    assert sorted(metrics) == later
    np.testing.assert_allclose(losses(metrics), losses(straight[1], later), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_next_phase_starts_from_the_last_and_keeps_frozen_parts_bit_identical(base, straight):
    from vllama_jax.checkpoints.orbax import read_run_params
    out = os.path.join(base, "next_phase")
    run_train(base, out, **{"init.output_root": base, "init.from_phase": "straight", "train.steps": 2,
                            "optimizer.trainable": "[connector]", "optimizer.learning_rate": 1e-3})
    before, after = read_run_params(straight[0]), read_run_params(out)
    for part in ("decoder", "vision"):
        for a, b in zip(jax.tree_util.tree_leaves(before[part]), jax.tree_util.tree_leaves(after[part]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before["connector"]),
                                                          jax.tree_util.tree_leaves(after["connector"]), strict=True)]
    assert any(moved)
    # The optimizer state of the phase holds Adam moments for the connector only (a frozen param's
    # slot is an empty MaskedNode, saved as None).
    with open(os.path.join(out, "checkpoints", "2", "train", "_METADATA")) as f:
        tree = json.load(f)["tree_metadata"]
    saved = [k for k, v in tree.items() if v["value_metadata"]["value_type"] != "None"]
    moments = [k for k in saved if "'mu'" in k or "'nu'" in k]
    assert moments and all("'connector'" in k for k in moments), moments[:5]


class DecoderLM(nn.Module):
    """Our decoder as the train step's model: batch -> logits, labels, mask."""
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, batch):
        from vllama_jax.models.decoder import Decoder

        logits, _ = Decoder(self.cfg, name="decoder")(batch["input_ids"], attention_mask=batch["attention_mask"])
        return {"logits": logits, "labels": batch["labels"], "attention_mask": batch["attention_mask"]}


def test_mixtral_load_balancing_loss_enters_the_step_when_asked(tmp_path):
    """The step's loss is HF MixtralForCausalLM's: cross-entropy alone by default, plus the config's
    coefficient x the load-balancing loss with output_router_logits."""
    torch = pytest.importorskip("torch")
    from hf_reference import hf_forward, tiny_hf_decoder
    from vllama_jax.config import TINY_DECODERS, VideoLLaMA2Config
    from vllama_jax.train.step import router_loss_weight

    mixtral = TINY_DECODERS["mixtral"]
    assert router_loss_weight(VideoLLaMA2Config(mixtral, None, None)) == 0.0  # HF's default: off
    on = dataclasses.replace(mixtral, output_router_logits=True, router_aux_loss_coef=0.5)
    assert router_loss_weight(VideoLLaMA2Config(on, None, None)) == 0.5
    assert DecoderConfig.from_hf_config(on.to_hf_config()).output_router_logits

    hf, cfg, decoder_params = tiny_hf_decoder(on, str(tmp_path))
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (4, 6)).astype(np.int32)
    mask = np.ones(ids.shape, bool)
    mask[1, 4:] = mask[3, 2:] = False  # right padding, out of the loss and of the router statistics
    labels = np.where(mask, ids, IGNORE_INDEX)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, "bad": np.zeros(4, bool)}
    model, params = DecoderLM(cfg), {"decoder": decoder_params}
    mask_tree = trainable_mask(params, ["decoder"])
    tx = make_optimizer(load_train_config(SMOKE).optimizer, 2, mask_tree)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0), "rng": jax.random.PRNGKey(1),
             "bad_samples": jnp.int32(0)}
    for config in (mixtral, on):
        coef = router_loss_weight(VideoLLaMA2Config(config, None, None))
        step = jax.jit(make_train_step(model, tx, mask_tree, lr_schedule(0.1, 2, 0.0), router_aux_loss_coef=coef))
        _, metrics = step(state, batch)
        hf_loss = hf_forward(hf, ids, mask, labels=torch.tensor(labels.astype(np.int64)),
                             output_router_logits=config.output_router_logits).loss
        np.testing.assert_allclose(float(metrics["loss"]), float(hf_loss), rtol=1e-6)
