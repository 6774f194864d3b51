"""`vllama-jax convert` and LoRA folders: merged weights against PEFT's own `merge_and_unload()`, training
runs and dtype changes written in the release layout and read back by `vllama_jax.load`.

LoRA folders are built as the original's training writes them: a transformers model wrapped by PEFT with
LoRA on every linear layer of the decoder (q/k/v/o, gate/up/down: the original's find_all_linear_names),
`save_pretrained` of the adapter, `non_lora_trainables.bin` under PEFT's prefixes, the whole config.json.
lora_B starts at zero in PEFT, so both halves are randomized: an unmerged adapter would show.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import vllama_jax  # noqa: E402
from vllama_jax.checkpoints.hf_files import read_state_dict  # noqa: E402
from vllama_jax.checkpoints.lora import LoRAError, merge_lora_folder  # noqa: E402
from vllama_jax.checkpoints.convert import convert  # noqa: E402
from vllama_jax.config import TINY_DECODERS, DecoderConfig  # noqa: E402
from vllama_jax.loading import decoder_module, decoder_params, load_videollama2_config  # noqa: E402

from conftest import FIXTURES  # noqa: E402
from hf_reference import hf_logits, left_padded_batch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = FIXTURES / "v_mistral_clip_stc"
TOWER = FIXTURE / "clip-vit-tiny-patch14-56"
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}


# ----------------------------------------------------------------------------------------------------
# Building LoRA folders with PEFT
# ----------------------------------------------------------------------------------------------------

def _randomize(model, seed, match=lambda name: True, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if match(name):
                p.copy_(torch.randn(p.shape, generator=gen) * scale / max(p.shape[-1], 1) ** 0.5)


def _hf_decoder(family="mistral"):
    cls = {"mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[family]
    cfg = cls[0](**{k: v for k, v in TINY_DECODERS[family].to_hf_config().items() if k != "model_type"},
                 attn_implementation="eager")
    model = cls[1](cfg).eval()
    _randomize(model, 0)
    return model


def _wrap_lora(model, seed=1, **lora):
    """`model` with a trained-looking LoRA adapter on every decoder linear layer (PEFT)."""
    config = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": LINEAR, "task_type": "CAUSAL_LM", **lora})
    wrapped = peft.get_peft_model(model, config)
    _randomize(wrapped, seed, match=lambda name: "lora_" in name, scale=2.0)
    return wrapped.eval()


def _our_logits(cfg: DecoderConfig, params, ids, mask):
    with jax.default_matmul_precision("highest"):
        logits, _ = decoder_module(cfg).apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    return np.asarray(logits)


# ----------------------------------------------------------------------------------------------------
# The merge against PEFT
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family,lora", [("mistral", {}), ("qwen2", {"use_rslora": True, "bias": "all",
                                                                     "rank_pattern": {"q_proj": 2}})])
def test_merge_equals_peft_merge_and_unload(tmp_path, family, lora):
    base = _hf_decoder(family)
    base.save_pretrained(tmp_path / "base")
    wrapped = _wrap_lora(base, **lora)
    if lora.get("bias") == "all":  # trained biases travel in the adapter file
        _randomize(wrapped, 2, match=lambda name: name.endswith("bias"))
    wrapped.save_pretrained(tmp_path / "lora")
    ids, mask = left_padded_batch(base.config.vocab_size)
    with wrapped.disable_adapter():
        unmerged = hf_logits(wrapped, ids, mask)
    want = hf_logits(wrapped.merge_and_unload(), ids, mask)

    cfg = TINY_DECODERS[family]
    merged = merge_lora_folder(str(tmp_path / "lora"), base=str(tmp_path / "base"))
    got = _our_logits(cfg, decoder_params(cfg, merged.state_dict, "merged"), ids, mask)
    assert np.abs(got - want)[mask].max() <= 1e-4
    assert np.abs(want - unmerged)[mask].max() > 0.1  # the adapter matters: a merge that dropped it would fail


# ----------------------------------------------------------------------------------------------------
# A whole VideoLLaMA 2 LoRA folder: base LLM + adapter + connector in non_lora_trainables.bin
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_videollama2(tmp_path_factory):
    """The fixture model's decoder saved as a plain Mistral base; a LoRA folder over it whose connector
    (non_lora_trainables.bin) is the fixture's, perturbed; PEFT's merged decoder as the reference."""
    root = tmp_path_factory.mktemp("lora_vl2")
    sd = read_state_dict(str(FIXTURE))
    raw = json.loads((FIXTURE / "config.json").read_text())
    decoder = load_videollama2_config(str(FIXTURE))[0].decoder
    hf_cfg = transformers.MistralConfig(**{k: v for k, v in decoder.to_hf_config().items() if k != "model_type"},
                                        attn_implementation="eager")
    llm = transformers.MistralForCausalLM(hf_cfg).eval()
    decoder_sd = {k: torch.tensor(v) for k, v in sd.items() if not k.startswith(("model.mm_projector", "model.vision"))}
    llm.load_state_dict(decoder_sd, strict=True)
    llm.save_pretrained(root / "base")
    for f in ("tokenizer.json", "tokenizer_config.json"):  # the original reads the tokenizer from the base
        (root / "base" / f).write_bytes((FIXTURE / f).read_bytes())

    lora = root / "finetune_lora"
    wrapped = _wrap_lora(llm, r=8, lora_alpha=16)
    wrapped.save_pretrained(lora)
    gen = np.random.default_rng(3)
    connector = {k: (v + 0.1 * gen.standard_normal(v.shape)).astype(np.float32)
                 for k, v in sd.items() if k.startswith("model.mm_projector.")}
    # As the original saves them: named_parameters() of the PEFT-wrapped model.
    torch.save({"base_model.model." + k: torch.tensor(v) for k, v in connector.items()}, lora / "non_lora_trainables.bin")
    (lora / "config.json").write_text(json.dumps({**raw, "_name_or_path": str(root / "base"),
                                                  "mm_vision_tower": str(TOWER)}))
    ids, mask = left_padded_batch(raw["vocab_size"])
    reference = hf_logits(wrapped.merge_and_unload(), ids, mask)
    return {"root": root, "lora": lora, "base": root / "base", "connector": connector, "ids": ids, "mask": mask,
            "reference": reference}


def test_convert_lora_folder_then_load(lora_videollama2):
    case = lora_videollama2
    out = case["root"] / "merged"
    r = subprocess.run([sys.executable, "-m", "vllama_jax", "convert", "--from", str(case["lora"]), "--to", str(out)],
                       capture_output=True, text=True, env=ENV, timeout=600)  # the base: config.json's _name_or_path
    assert r.returncode == 0, r.stderr[-3000:]
    model = vllama_jax.load(str(out))
    got = _our_logits(model.config.decoder, model.params["decoder"], case["ids"], case["mask"])
    assert np.abs(got - case["reference"])[case["mask"]].max() <= 1e-4

    written = read_state_dict(str(out))
    for key, value in case["connector"].items():
        np.testing.assert_array_equal(written[key], value)
    tower = read_state_dict(str(TOWER))
    for key, value in tower.items():  # the vision tower: from the folder mm_vision_tower names, as the original
        np.testing.assert_array_equal(written["model.vision_tower.vision_tower." + key], value)
    assert model.tokenizer is not None and model.tokenizer("a b").input_ids  # the base's tokenizer, carried over

    # Loading the LoRA folder directly merges the same model in memory.
    direct = vllama_jax.load(str(case["lora"]), base=str(case["base"]))
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(direct.params), jax.device_get(model.params))


def _break(case, tmp_path, name):
    """A copy of the LoRA folder with `name` broken."""
    import shutil
    lora = tmp_path / "lora"
    shutil.copytree(case["lora"], lora)
    if name == "missing lora_B":
        from safetensors.numpy import load_file, save_file
        weights = load_file(lora / "adapter_model.safetensors")
        del weights["base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"]
        save_file(weights, lora / "adapter_model.safetensors")
    elif name == "dora":
        config = json.loads((lora / "adapter_config.json").read_text())
        (lora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    elif name == "no base":
        config = json.loads((lora / "config.json").read_text())
        (lora / "config.json").write_text(json.dumps({**config, "_name_or_path": "mistralai/Mistral-7B-v0.1"}))
    return lora


@pytest.mark.parametrize("name,message", [
    ("missing lora_B", r"adapter_model\.safetensors: base_model\.model\.model\.layers\.1\.mlp\.up_proj\.lora_B\.weight is missing"),
    ("dora", r"adapter_config\.json: use_dora=True: DoRA .* not supported"),
    ("no base", r"_name_or_path='mistralai/Mistral-7B-v0.1' is not a local folder: pass --base"),
])
def test_bad_lora_folders_are_named(lora_videollama2, tmp_path, name, message):
    lora = _break(lora_videollama2, tmp_path, name)
    with pytest.raises(LoRAError, match=message):
        merge_lora_folder(str(lora))


def test_base_without_weights_or_without_the_adapted_layer(lora_videollama2, tmp_path):
    case = lora_videollama2
    empty = tmp_path / "empty_base"
    empty.mkdir()
    with pytest.raises(Exception, match=f"{empty}: no weights found"):
        merge_lora_folder(str(case["lora"]), base=str(empty))
    # A base with one layer fewer than the adapter was trained on.
    sd = {k: v for k, v in read_state_dict(str(case["base"])).items() if not k.startswith("model.layers.1.")}
    small = tmp_path / "small_base"
    small.mkdir()
    from safetensors.numpy import save_file
    save_file(sd, small / "model.safetensors")
    with pytest.raises(LoRAError, match=r"adapter_model\.safetensors: adapter for model\.layers\.1\.mlp\.down_proj, "
                                        rf"but {small} has no model\.layers\.1\.mlp\.down_proj\.weight"):
        merge_lora_folder(str(case["lora"]), base=str(small))


# ----------------------------------------------------------------------------------------------------
# A training run
# ----------------------------------------------------------------------------------------------------

def test_convert_training_run_then_load(tmp_path_factory):
    from test_train import RESUME_AT, straight_run

    from vllama_jax.checkpoints.orbax import read_run_params
    # test_train.py's smoke run (tiny-mistral, checkpoints at steps 4 and 8), shared with it in a session.
    run, _ = straight_run(str(tmp_path_factory.getbasetemp()))
    out = convert(run, str(tmp_path_factory.mktemp("released") / "model"), step=RESUME_AT)
    model = vllama_jax.load(out)
    assert model.tokenizer is not None  # the run's data.tokenizer
    want = jax.device_get(read_run_params(run, step=RESUME_AT))
    assert set(model.params) == set(want)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(model.stacked_params()), want)
    later = jax.device_get(read_run_params(run))  # training moved on after RESUME_AT: --step picked it
    assert not np.array_equal(later["connector"]["readout"]["fc2"]["kernel"], want["connector"]["readout"]["fc2"]["kernel"])


# ----------------------------------------------------------------------------------------------------
# Release layout in bfloat16
# ----------------------------------------------------------------------------------------------------

def test_bfloat16_release_is_half_the_size(tmp_path):
    out = convert(str(FIXTURE), str(tmp_path / "bf16"), dtype="bfloat16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ratio = os.path.getsize(os.path.join(out, "model.safetensors")) / os.path.getsize(FIXTURE / "model.safetensors")
    assert 0.49 < ratio < 0.52, ratio
    full, half = vllama_jax.load(str(FIXTURE)), vllama_jax.load(out)
    assert half.tokenizer is not None
    want = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(jnp.bfloat16).astype(np.float32), full.params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(half.params), want)
