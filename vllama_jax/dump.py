"""A model's outputs on pre-processed inputs, under the names of the reference fixtures (`vllama-jax dump`).

    VideoLLaMA 2 folder  in: input_ids, attention_mask, labels, s{i}_modal, s{i}_video / s{i}_image / s{i}_audio
                         out: logits, loss, inputs_embeds, attention_mask, labels, vision_features, projector_out,
                              audio_projector_out, greedy_s0 (with greedy=N: sample 0 alone, N greedy tokens)
    decoder folder       in: input_ids, attention_mask   out: logits (positions counted over unmasked tokens)
    vision tower folder  in: pixel_values                out: last_hidden_state, hidden_states (layers+1, N, tokens, C)
    BEATs .pt            in: fbank                       out: features

The original's outputs are cut to its own batch length (the longest spliced sample), so they compare
one to one with `tests/data/fixtures/*/expected.npz`.
"""
import numpy as np

import vllama_jax
from vllama_jax.inference import media_batch
from vllama_jax.models.sequence import spliced_length
from vllama_jax.models.videollama2 import is_placeholder
from vllama_jax.train.loss import causal_lm_loss


def fixture_samples(inputs) -> list:
    """The per-sample media of a fixture-format npz: [{"video": ..., "audio": ...} | None, ...]."""
    n = inputs["input_ids"].shape[0]
    samples = []
    for i in range(n):
        modal = str(inputs[f"s{i}_modal"]) if f"s{i}_modal" in inputs else None
        s = {}
        for key in ("video", "image", "audio"):
            if f"s{i}_{key}" in inputs:
                s[key] = np.asarray(inputs[f"s{i}_{key}"], np.float32)
        if modal is not None and modal not in ("video", "av", "image", "audio"):
            raise ValueError(f"s{i}_modal is '{modal}': expected video, av, image or audio")
        samples.append(s or None)
    return samples


def dump_videollama2(model, inputs, greedy: int):
    cfg = model.config
    ids = np.asarray(inputs["input_ids"])
    mask = np.asarray(inputs["attention_mask"]).astype(bool) if "attention_mask" in inputs else np.ones(ids.shape, bool)
    labels = np.asarray(inputs["labels"]) if "labels" in inputs else None
    samples = fixture_samples(inputs)
    media = media_batch(samples, cfg)
    batch = {"input_ids": ids.astype(np.int32), "attention_mask": mask, **media}
    if labels is not None:
        batch["labels"] = labels.astype(np.int32)
    out = model.forward(batch)

    # The original pads the batch to its longest spliced sample; our buffer has a fixed, possibly longer, length.
    lengths = []
    for i in range(ids.shape[0]):
        has_video = cfg.vision is not None and bool(media["has_video"][i])
        fbank_frames = media["audio"].shape[1] if "audio" in media and media["has_audio"][i] else None
        placeholder = is_placeholder(ids[i]).any()
        lengths.append(spliced_length(cfg, ids.shape[1], has_video, fbank_frames) if placeholder else ids.shape[1])
    length = max(lengths)
    result = {k: out[k][:, :length] for k in ("logits", "inputs_embeds", "attention_mask")}
    if labels is not None:
        result["labels"] = out["labels"][:, :length].astype(np.int64)
        loss, _ = causal_lm_loss(out["logits"], out["labels"])
        result["loss"] = np.asarray(loss, np.float32)

    feats = model.encode({k: v for k, v in media.items() if k in ("video", "audio")})
    if "vision_features" in feats:
        rows = np.flatnonzero(media["has_video"])
        t = media["video"].shape[1]
        vf = feats["vision_features"].reshape((len(samples), t) + feats["vision_features"].shape[1:])
        result["vision_features"] = vf[rows].reshape((-1,) + vf.shape[2:])
        result["projector_out"] = feats["projector_out"][rows]
    if "audio_projector_out" in feats and media["has_audio"].any():
        result["audio_projector_out"] = feats["audio_projector_out"][np.flatnonzero(media["has_audio"])]
    if greedy:
        s0 = {k: v[:1] for k, v in media.items()}
        result["greedy_s0"] = model.generate(ids[:1], mask[:1], media=s0, max_new_tokens=greedy,
                                             stop_at_eos=False).astype(np.int64)
    return result


def run_dump(model_path: str, inputs, greedy: int = 0) -> dict:
    import jax.numpy as jnp

    model = vllama_jax.load(model_path, dtype=jnp.float32)
    if getattr(model, "kind", None) is None:
        return dump_videollama2(model, inputs, greedy)
    if model.kind == "decoder":
        ids = jnp.asarray(inputs["input_ids"], jnp.int32)
        mask = jnp.asarray(inputs["attention_mask"]) if "attention_mask" in inputs else None
        logits, _ = model(ids, attention_mask=mask)
        return {"logits": np.asarray(logits)}
    if model.kind == "vision":
        out = model(jnp.asarray(inputs["pixel_values"], jnp.float32), output_hidden_states=True)
        return {"last_hidden_state": np.asarray(out["last_hidden_state"]),
                "hidden_states": np.asarray(out["hidden_states"])}
    if model.kind == "beats":
        return {"features": np.asarray(model(jnp.asarray(inputs["fbank"], jnp.float32)))}
    raise ValueError(f"cannot dump a model of kind {model.kind}")
