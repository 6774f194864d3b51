"""Decoder presets: their hyper-parameters are the released models' and their param counts are
transformers'. Counts come from `jax.eval_shape` (our side) and the meta device (HF side): no memory."""
import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vllama_jax import config as C  # noqa: E402
from vllama_jax.models.decoder import abstract_params  # noqa: E402

# The released config.json files (hub ids in the comments), as far as the decoder is concerned.
RELEASED = {
    "MISTRAL_7B_INSTRUCT_V02": {  # mistralai/Mistral-7B-Instruct-v0.2
        "model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0, "max_position_embeddings": 32768, "sliding_window": None,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"},
    "MIXTRAL_8X7B_INSTRUCT_V01": {  # mistralai/Mixtral-8x7B-Instruct-v0.1
        "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0, "max_position_embeddings": 32768, "sliding_window": None,
        "num_local_experts": 8, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"},
    "QWEN2_7B_INSTRUCT": {  # Qwen/Qwen2-7B-Instruct
        "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "max_position_embeddings": 32768, "sliding_window": 131072,
        "use_sliding_window": False, "max_window_layers": 28, "tie_word_embeddings": False,
        "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu"},
    "QWEN2_72B_INSTRUCT": {  # Qwen/Qwen2-72B-Instruct
        "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 8192, "intermediate_size": 29568,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "max_position_embeddings": 32768, "sliding_window": 131072,
        "use_sliding_window": False, "max_window_layers": 80, "tie_word_embeddings": False,
        "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu"},
}

# Published sizes of the released checkpoints.
COUNTS = {
    "MISTRAL_7B_INSTRUCT_V02": 7_241_732_096,
    "MIXTRAL_8X7B_INSTRUCT_V01": 46_702_792_704,
    "QWEN2_7B_INSTRUCT": 7_615_616_512,
    "QWEN2_72B_INSTRUCT": 72_706_203_648,
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_preset_is_the_released_config(name):
    assert C.DecoderConfig.from_hf_config(RELEASED[name]) == getattr(C, name)


@pytest.mark.parametrize("name", list(COUNTS))
def test_param_count_matches_transformers(name):
    cfg = getattr(C, name)
    ours = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nn.unbox(abstract_params(cfg))))
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg.to_hf_config()))
    theirs = sum(p.numel() for p in hf.parameters())
    assert ours == theirs == COUNTS[name], f"{name}: ours {ours:,}, transformers {theirs:,}, released {COUNTS[name]:,}"
