"""Decoder parity against transformers' MistralForCausalLM, Qwen2ForCausalLM and MixtralForCausalLM.

Each reference is a tiny random HF model (float32, eager attention) written with `save_pretrained` and
read back by our loader (read_state_dict + hf_key_map + to_params), so the released key names are what
is tested. Logits are compared on the real (unmasked) tokens only.
"""
import dataclasses

import flax.linen as nn
import jax
from flax import traverse_util
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vllama_jax.checkpoints import CheckpointError, read_state_dict, to_params  # noqa: E402
from vllama_jax.config import TINY_DECODERS, ConfigError, DecoderConfig  # noqa: E402
from vllama_jax.models.decoder import Decoder, abstract_params, hf_key_map, init_cache, router_aux_loss  # noqa: E402
from vllama_jax.train.loss import causal_lm_loss  # noqa: E402

from hf_reference import hf_forward, tiny_hf_decoder  # noqa: E402

TOL = 1e-4
B, L, PREFILL, EXTRA_SLOTS = 3, 12, 8, 4

CASES = {
    "mistral": TINY_DECODERS["mistral"],
    "mistral_sliding": dataclasses.replace(TINY_DECODERS["mistral"], sliding_window=4),  # window < L
    "qwen2_tied": dataclasses.replace(TINY_DECODERS["qwen2"], tie_word_embeddings=True),
    "mixtral": TINY_DECODERS["mixtral"],
}


def _masks():
    left = np.ones((B, L), bool)
    left[1, :4] = False
    left[2, :7] = False
    right = np.ones((B, L), bool)
    right[1, 9:] = False
    right[2, 5:] = False
    return {"left": left, "right": right}


def _build(name, folder):
    """HF reference model of CASES[name], saved to `folder` and loaded back by our loader."""
    cfg = CASES[name]
    hf, ours_cfg, params = tiny_hf_decoder(cfg, folder)
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (B, L))
    refs = {kind: hf_forward(hf, ids, mask, output_router_logits=hf.config.model_type == "mixtral") for kind, mask in _masks().items()}
    return dict(name=name, cfg=ours_cfg, hf=hf, folder=folder, params=params, ids=ids, refs=refs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> the built case, each built once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _build(name, str(tmp_path_factory.mktemp(name)))
        return cache[name]

    return get


@pytest.fixture(params=list(CASES))
def case(request, built):
    return built(request.param)


def _forward(cfg, **module_kwargs):
    model = Decoder(cfg, **module_kwargs)

    @jax.jit
    def run(params, ids, mask):
        (logits, _), state = model.apply({"params": params}, ids, attention_mask=mask, mutable=["intermediates"])
        return logits, state

    return run


def _max_err(ours, ref, mask):
    return float(np.max(np.abs(np.asarray(ours) - ref)[mask]))


def test_logits_match_hf_left_and_right_padded(case):
    run = _forward(case["cfg"])
    for name, mask in _masks().items():
        logits, state = run(case["params"], case["ids"], mask)
        ref = case["refs"][name].logits.numpy()
        err = _max_err(logits, ref, mask)
        assert err < TOL, f"{case['name']} {name}-padded: max abs error {err:.2e}"
        assert np.abs(ref[mask]).max() > 0.5  # the comparison is not between two near-zero tensors

    if case["cfg"].num_experts:
        # The load-balancing loss pooled over all layers is HF's, with the padding masked out.
        mask = _masks()["right"]
        _, state = run(case["params"], case["ids"], mask)
        from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
        ref = load_balancing_loss_func(case["refs"]["right"].router_logits, case["cfg"].num_experts,
                                       case["cfg"].num_experts_per_tok, torch.tensor(mask.astype(np.int64)))
        ours = float(router_aux_loss(state["intermediates"]))
        assert abs(ours - float(ref)) < 1e-5, f"aux loss {ours} vs HF {float(ref)}"


def test_mixtral_training_loss_matches_hf(built):
    """With output_router_logits, HF's MixtralForCausalLM loss is cross-entropy + coef x the pooled
    load-balancing loss: ours (train/loss.py + router_aux_loss, what the train step adds) equals it."""
    case = built("mixtral")
    mask = _masks()["right"]
    labels = np.where(mask, case["ids"], -100)
    hf_loss = hf_forward(case["hf"], case["ids"], mask, labels=torch.tensor(labels), output_router_logits=True).loss
    logits, state = _forward(case["cfg"])(case["params"], case["ids"], mask)
    ce, _ = causal_lm_loss(logits, labels)
    aux = router_aux_loss(state["intermediates"])
    assert float(aux) > 0.5  # N * sum f P is ~k for any routing: the term is really there
    ours = float(ce) + case["cfg"].router_aux_loss_coef * float(aux)
    assert abs(ours - float(hf_loss)) < 1e-5, (ours, float(hf_loss))


def test_sliding_window_is_exercised(built):
    """Same weights with and without the window: HF's logits must differ past the window, or the
    sliding-window case would prove nothing."""
    plain = built("mistral")["refs"]["right"].logits.numpy()
    sliding = built("mistral_sliding")["refs"]["right"].logits.numpy()
    window = CASES["mistral_sliding"].sliding_window
    assert np.abs(plain[:, :window] - sliding[:, :window]).max() < 1e-5
    assert np.abs(plain[0, window:] - sliding[0, window:]).max() > 1e-2


# Plain Mistral runs the same code as the sliding-window one, minus the window.
@pytest.mark.parametrize("name", ["mistral_sliding", "qwen2_tied", "mixtral"])
def test_kv_cache_decode_matches_hf(built, name):
    """Prefill PREFILL tokens of the left-padded batch, then decode one token per step: every step's
    logits are HF's full-forward logits at that position."""
    case = built(name)
    cfg, params, ids = case["cfg"], case["params"], case["ids"]
    mask = _masks()["left"]
    ref = case["refs"]["left"].logits.numpy()
    model = Decoder(cfg)
    # Mask over all cache slots; slots past the prompt are empty.
    slot_mask = np.concatenate([mask, np.zeros((B, EXTRA_SLOTS), bool)], axis=1)
    step = jax.jit(lambda p, x, c, i: model.apply({"params": p}, x, attention_mask=slot_mask, cache=c, cache_index=i))

    cache = init_cache(cfg, B, L + EXTRA_SLOTS)
    logits, cache = step(params, ids[:, :PREFILL], cache, jnp.int32(0))
    errs = [_max_err(logits, ref[:, :PREFILL], mask[:, :PREFILL])]
    for t in range(PREFILL, L):
        logits, cache = step(params, ids[:, t:t + 1], cache, jnp.int32(t))
        errs.append(_max_err(logits, ref[:, t:t + 1], mask[:, t:t + 1]))
    assert max(errs) < TOL, f"{case['name']}: decode errors per step {errs}"


def test_grouped_moe_dispatch_matches_hf(built):
    case = built("mixtral")
    mask = _masks()["left"]
    logits, _ = _forward(case["cfg"], moe_dispatch="grouped")(case["params"], case["ids"], mask)
    err = _max_err(logits, case["refs"]["left"].logits.numpy(), mask)
    assert err < TOL, f"grouped dispatch: max abs error {err:.2e}"


def test_inputs_embeds_path(built):
    case = built("mistral")
    model, params, ids = Decoder(case["cfg"]), case["params"], case["ids"]
    mask = _masks()["left"]

    @jax.jit
    def run(p):
        embeds = model.apply({"params": p}, jnp.asarray(ids), method=Decoder.embed)
        return embeds, model.apply({"params": p}, inputs_embeds=embeds, attention_mask=mask)[0]

    embeds, logits = run(params)
    assert embeds.shape == (B, L, case["cfg"].hidden_size)
    err = _max_err(logits, case["refs"]["left"].logits.numpy(), mask)
    assert err < TOL, f"inputs_embeds: max abs error {err:.2e}"
    with pytest.raises(ValueError, match="exactly one"):
        model.apply({"params": params}, ids, inputs_embeds=embeds)


@pytest.mark.parametrize("policy", ["dots_saveable"])
def test_remat_gradients_match_hf(built, policy):
    """Training path: the loss gradient through the rematerialised scan equals PyTorch's autograd."""
    case = built("mistral")
    cfg, params, hf = case["cfg"], case["params"], case["hf"]
    ids = case["ids"]
    model = Decoder(cfg, remat_policy=policy)

    def loss_fn(p):
        logits, _ = model.apply({"params": p}, ids)
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(ids)[:, 1:, None], axis=-1))

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    hf.zero_grad()
    out = hf(input_ids=torch.tensor(ids), labels=torch.tensor(ids))
    out.loss.backward()
    assert abs(float(loss) - out.loss.item()) < TOL
    q_ref = hf.model.layers[1].self_attn.q_proj.weight.grad.numpy().T
    err_q = float(np.abs(np.asarray(grads["layers"]["self_attn"]["q_proj"]["kernel"][1]) - q_ref).max())
    emb_ref = hf.model.embed_tokens.weight.grad.numpy()
    err_e = float(np.abs(np.asarray(grads["embed_tokens"]["embedding"]) - emb_ref).max())
    assert max(err_q, err_e) < TOL, f"remat {policy}: gradient errors q_proj {err_q:.2e}, embedding {err_e:.2e}"
    assert np.abs(q_ref).max() > 1e-3


# --- clear errors -----------------------------------------------------------------------------------

def test_missing_key_is_named(built):
    case = built("mistral")
    cfg, folder = case["cfg"], case["folder"]
    sd = read_state_dict(folder)
    del sd["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(CheckpointError, match=r"missing key\(s\) model\.layers\.1\.mlp\.up_proj\.weight"):
        to_params(sd, hf_key_map(cfg), nn.unbox(abstract_params(cfg)), source=folder)


def test_wrong_shape_is_named(built):
    case = built("mistral")
    cfg, folder = case["cfg"], case["folder"]
    sd = read_state_dict(folder)
    sd["model.layers.0.self_attn.k_proj.weight"] = np.zeros((48, cfg.hidden_size), np.float32)
    with pytest.raises(CheckpointError, match=r"key model\.layers\.0\.self_attn\.k_proj\.weight: "
                       r"checkpoint \(48, 64\), model expects \(32, 64\)"):
        to_params(sd, hf_key_map(cfg), nn.unbox(abstract_params(cfg)), source=folder)


def test_unknown_model_type():
    d = {**TINY_DECODERS["mistral"].to_hf_config(), "model_type": "llama"}
    with pytest.raises(ConfigError, match="model_type 'llama' is not a supported decoder"):
        DecoderConfig.from_hf_config(d)



def test_one_row_gpu_product_keeps_a_second_row(monkeypatch):
    """On a GPU, a batch-1 decode product with a small weight is computed as a two-row GEMM (XLA:GPU would
    rewrite the one-row product into multiply + reduce: layers/linear.py); the answer is the same product,
    and large weights or several rows are left as they are."""
    from vllama_jax.layers import linear

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 1, 64)), jnp.float32)
    small = jnp.asarray(rng.standard_normal((64, 96)), jnp.float32)
    want = np.asarray(x) @ np.asarray(small)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    padded = "concatenate %0, %1, dim = 0 : (tensor<1x64xf32>, tensor<1x64xf32>) -> tensor<2x64xf32>"
    assert padded in jax.jit(linear.dot).lower(x, small).as_text()
    np.testing.assert_allclose(jax.jit(linear.dot)(x, small), want, rtol=1e-5, atol=1e-5)
    assert "concatenate" not in jax.jit(linear.dot).lower(jnp.concatenate([x, x]), small).as_text()
    monkeypatch.setattr(linear, "GPU_SMALL_PRODUCT", 64 * 96)
    assert "concatenate" not in jax.jit(lambda a, b: linear.dot(a, b)).lower(x, small).as_text()  # a new trace


def test_init_follows_initializer_range():
    """A decoder trained from scratch starts as transformers' does: every embedding and projection drawn
    from N(0, initializer_range), the field read from and written to config.json (the demo's narrow
    decoder uses 0.125, 1 / sqrt(width))."""
    cfg = dataclasses.replace(TINY_DECODERS["qwen2"], initializer_range=0.125)
    back = DecoderConfig.from_hf_config(cfg.to_hf_config())
    assert back.initializer_range == 0.125
    ref = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**cfg.to_hf_config()))
    params = nn.unbox(Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    matrices = {k: v for k, v in flat.items() if k.endswith(("kernel", "embedding"))}
    assert {k.split("/")[-2] for k in matrices} >= {"embed_tokens", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                    "up_proj", "down_proj", "lm_head"}
    for k, v in matrices.items():
        assert abs(v.std() / 0.125 - 1) < 0.1, k
    for name, w in ref.named_parameters():
        if w.ndim == 2:  # transformers' own init of the same config: the same spread
            assert abs(float(w.detach().std()) / 0.125 - 1) < 0.1, name
    default = nn.unbox(Decoder(TINY_DECODERS["qwen2"]).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    assert abs(float(np.std(default["embed_tokens"]["embedding"])) / 0.02 - 1) < 0.1
