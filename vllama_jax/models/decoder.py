"""The causal language model: Mistral, Qwen2 and Mixtral in one module, told apart by `DecoderConfig`.

    input_ids (B, L) int  or  inputs_embeds (B, L, D)  ->  logits (B, L, V) float32  (or hidden (B, L, D))

A pre-norm transformer: token embedding, `num_layers` x [RMSNorm -> causal GQA attention with RoPE ->
residual -> RMSNorm -> MLP -> residual], final RMSNorm, LM head. The family flags:
    qwen2     q/k/v projections carry a bias (`attention_bias`)
    mixtral   the MLP is a sparse mixture of experts (`num_experts` > 0, layers/moe.py)
    mistral   optionally a sliding attention window (`sliding_window`)

The layers are one `nn.scan` over a leading `layers` axis (logical name "layers"), so a 72B model
compiles one layer, and training can remat each layer (`remat_policy`). Param tree (HF names):

    embed_tokens/embedding                       (vocab, embed)
    layers/input_layernorm/scale                 (layers, embed)
    layers/self_attn/{q,k,v,o}_proj/kernel[,bias]
    layers/post_attention_layernorm/scale
    layers/mlp/{gate_proj,up_proj,down_proj}/kernel                       dense families
    layers/block_sparse_moe/{gate/kernel, experts/{w1,w3,w2}}            mixtral
    norm/scale
    lm_head/kernel                               (embed, vocab); absent with tie_word_embeddings

KV cache (`init_cache`): {"k", "v"} of shape (layers, B, S, KVH, hd); each scanned layer reads and
writes its own slice. The L new tokens go to slots [cache_index, cache_index + L) and `attention_mask`
(B, S) marks which slots hold real tokens, so left-padded prompts and one-token decode steps share one
compiled shape (see layers/attention.py). cache_index is a scalar, or (B,) a write slot per row.

Decoding (`init_cache(..., per_layer=True)`: a list of `layers` caches {"k", "v"} (B, S, KVH, hd)) runs the
layers unrolled: under `nn.scan` XLA slices (copies) every layer's weights out of the stack at every step,
and a decode step is a pass over the weights, so that copy would double or triple its memory traffic. For
generation the params' layers are split once into per-layer buffers (`split_layers`; the whole model runs
unrolled on such params), each layer's q/k/v and gate/up projections concatenated into one product each
(`fuse_projections`); on the CPU each Dense kernel goes to the decode kernel as a `LayerRef`, read in place
(over stacked params too: the "refs" layout), and is held packed in column strips that the kernel reads as
one stream a thread (`pack_kernels`, layers/packed.py: the "packed" layout). `decode_layout` picks. Each layer's cache is updated in place in
the loop carry. Training keeps the scan (one layer compiled, remat per layer).
"""
from typing import Any, Optional

import flax.linen as nn
from flax.traverse_util import flatten_dict
import jax
import jax.numpy as jnp
import numpy as np

from vllama_jax import kernels
from vllama_jax.checkpoints.keymap import KeyMap
from vllama_jax.config import DecoderConfig
from vllama_jax.layers.attention import Attention
from vllama_jax.layers.linear import Dense, LayerRef
from vllama_jax.layers.packed import Packed, pack, unpack
from vllama_jax.layers.mlp import GatedMLP
from vllama_jax.layers.moe import SparseMoE, load_balancing_loss
from vllama_jax.layers.norms import RMSNorm
from vllama_jax.layers.remat import remat
from vllama_jax.quantize import QArray, is_decoder_kernel

# Logical names of an activation at a block boundary, mapped to the mesh by sharding.LOGICAL_AXIS_RULES.
ACTIVATION_AXES = ("batch", "length", "act_embed")
# Logical names of the KV cache arrays (layers, B, S, KVH, hd), for sharding.named_sharding.
CACHE_AXES = ("layers", "batch", "cache_length", "kv_heads", "head_dim")


class DecoderLayer(nn.Module):
    """One pre-norm block. Called by `nn.scan` as (x, layer_cache, positions, mask, cache_index) ->
    (x, new_layer_cache): x is the carry, the cache slice the scanned input/output, the rest broadcast."""

    config: DecoderConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    moe_dispatch: str = "dense"

    @nn.compact
    def __call__(self, x, cache, positions, mask, cache_index):
        cfg = self.config
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype, name=name)
        init = nn.initializers.normal(stddev=cfg.initializer_range)
        h, new_cache = Attention(
            num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.dim_per_head,
            qkv_bias=cfg.attention_bias, rope_theta=cfg.rope_theta, causal=True,
            sliding_window=cfg.sliding_window, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init,
            name="self_attn",
        )(norm("input_layernorm")(x), positions=positions, mask=mask, cache=cache, cache_index=cache_index)
        x = x + h
        h = norm("post_attention_layernorm")(x)
        if cfg.num_experts:
            # The aux loss counts real tokens only; with a cache the mask covers slots, not these tokens,
            # and a cache means inference, where the loss is not wanted anyway.
            token_mask = mask if cache is None else None
            h = SparseMoE(cfg.num_experts, cfg.num_experts_per_tok, cfg.intermediate_size, self.moe_dispatch,
                          self.dtype, self.param_dtype, init, name="block_sparse_moe")(h, token_mask)
        else:
            h = GatedMLP(cfg.intermediate_size, self.dtype, self.param_dtype, init, name="mlp")(h)
        return nn.with_logical_constraint(x + h, ACTIVATION_AXES), new_cache


def router_aux_loss(intermediates) -> jax.Array:
    """The load-balancing loss of all Mixtral layers, from the `intermediates` of an apply (with
    mutable=["intermediates"]) of a Decoder or of a model holding one."""
    stats = [v for k, v in flatten_dict(intermediates).items() if k[-1] == "router_stats"]
    if len(stats) != 1:
        raise ValueError(f"router_aux_loss: expected one decoder's router_stats in the intermediates, found {len(stats)}")
    return load_balancing_loss(stats[0][0])  # sow keeps a tuple with one entry per call: one call here


def default_positions(attention_mask, batch: int, length: int, cache_index=None):
    """(B, L) int32 positions of the L new tokens: counted over the unmasked slots (so a left-padded row
    starts at 0 at its first real token), or 0..L-1 (+ cache_index) without a mask."""
    start = 0 if cache_index is None else jnp.asarray(cache_index, jnp.int32)
    if attention_mask is None:
        start = start[:, None] if jnp.ndim(start) == 1 else start
        return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32) + start, (batch, length))
    pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
    if cache_index is not None and start.ndim == 1:  # (B,) a write slot per row
        pos = jnp.take_along_axis(pos, start[:, None] + jnp.arange(length, dtype=jnp.int32)[None], axis=1)
    elif cache_index is not None:  # the mask spans all cache slots; keep the new tokens' slots
        pos = jax.lax.dynamic_slice_in_dim(pos, start, length, axis=1)
    return jnp.maximum(pos, 0)


class Decoder(nn.Module):
    """Embedding -> scanned `DecoderLayer`s -> final norm -> LM head. Mixtral layers sow their router
    statistics as `intermediates/layers/block_sparse_moe/router_stats` (stacked per layer; see layers/moe.py
    and `router_aux_loss`)."""

    config: DecoderConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"  # "none" | "full" | a jax.checkpoint_policies name, for training
    moe_dispatch: str = "dense"  # Mixtral only: "dense" | "grouped" (layers/moe.py)

    def setup(self):
        cfg = self.config
        init = nn.initializers.normal(stddev=cfg.initializer_range)
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
            embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")))
        stack = nn.scan(
            remat(DecoderLayer, self.remat_policy),
            variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"})
        self.layers = stack(cfg, self.dtype, self.param_dtype, self.moe_dispatch)
        self.norm = RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = Dense(cfg.vocab_size, ("embed", "vocab"), False, self.dtype, self.param_dtype, init)

    def _unrolled_layers(self, x, caches, positions, mask, cache_index):
        """The decode path: each layer applied on its `layer_view` of the stacked params and its own cache."""
        stacked = nn.unbox(self.variables["params"]["layers"])
        layer = DecoderLayer(self.config, self.dtype, self.param_dtype, self.moe_dispatch, parent=None)
        new_caches = []
        for i, cache in enumerate(caches):
            # split_layers: the layer's own buffers (Dense kernels as references, for the CPU decode kernel)
            view = layer_view(stacked[i]) if isinstance(stacked, (list, tuple)) else layer_view(stacked, i)
            x, c = layer.apply({"params": view}, x, cache, positions, mask, cache_index)
            new_caches.append(c)
        return x, new_caches

    def embed(self, input_ids):
        """(B, L) int -> (B, L, D) token embeddings."""
        # Gather the table's fsdp shards before the lookup, so XLA does the vocab-parallel lookup (local
        # rows, then an all-reduce over `tensor`) instead of rematerialising the gather's output.
        table = nn.with_logical_constraint(self.embed_tokens.embedding, ("vocab", "act_embed"))
        return jnp.take(table, input_ids, axis=0).astype(self.dtype)

    def __call__(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, positions=None,
                 cache=None, cache_index=None, return_hidden=False):
        """See the module docstring. attention_mask: (B, L) key validity without a cache, (B, S) over the
        cache slots with one. Returns (logits (B, L, V) float32 or hidden (B, L, D), new_cache or None)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Decoder: pass exactly one of input_ids (B, L) or inputs_embeds (B, L, D)")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
        b, l = x.shape[:2]
        per_layer = isinstance(cache, (list, tuple))
        if cache is not None:
            if cache_index is None:
                raise ValueError("Decoder: a cache needs cache_index, the slot of the first new token")
            got = (len(cache),) + cache[0]["k"].shape[:1] if per_layer else cache["k"].shape[:2]
            if tuple(got) != (self.config.num_layers, b):
                raise ValueError(f"Decoder: cache of {got} (layers, B), expected (layers={self.config.num_layers}, "
                                 f"B={b})")
        if attention_mask is not None:
            slots = None if cache is None else (cache[0]["k"] if per_layer else cache["k"]).shape[-3]
            want = (b, l if cache is None else slots)
            if attention_mask.shape != want:
                raise ValueError(f"Decoder: attention_mask shape {attention_mask.shape}, expected (B, "
                                 f"{'L' if cache is None else 'S'}) = {want}")
        if positions is None:
            positions = default_positions(attention_mask, b, l, None if cache is None else cache_index)

        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        split = not self.is_initializing() and isinstance(self.variables["params"].get("layers"), (list, tuple))
        if split and cache is not None and not per_layer:
            raise ValueError("Decoder: split-layer params (split_layers) need a per-layer cache "
                             "(init_cache(..., per_layer=True))")
        unrolled = (per_layer or split) and not self.is_initializing()
        if unrolled:
            caches = cache if cache is not None else [None] * self.config.num_layers
            x, new_cache = self._unrolled_layers(x, caches, positions, attention_mask, cache_index)
            new_cache = new_cache if cache is not None else None
        else:
            x, new_cache = self.layers(x, cache, positions, attention_mask, cache_index)
        x = self.norm(x)
        if return_hidden:
            return x, new_cache
        if self.config.tie_word_embeddings:
            logits = self.embed_tokens.attend(x)
        elif unrolled:  # the LM head through the decode kernel too (it is a tenth of a small model's weights)
            head = Dense(self.config.vocab_size, ("embed", "vocab"), False, self.dtype, self.param_dtype, parent=None)
            logits = head.apply({"params": {"kernel": LayerRef.whole(nn.unbox(self.variables["params"]["lm_head"]["kernel"]))}},
                                x)
        else:
            logits = self.lm_head(x)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits.astype(jnp.float32), new_cache


def init_cache(config: DecoderConfig, batch: int, max_len: int, dtype=jnp.float32, per_layer: bool = False):
    """An empty KV cache: {"k", "v"} zeros of shape (layers, B, max_len, KVH, hd); with `per_layer`, a list
    of `layers` such dicts of shape (B, max_len, KVH, hd) (the unrolled decode path)."""
    shape = (batch, max_len, config.num_kv_heads, config.dim_per_head)
    if per_layer:
        return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(config.num_layers)]
    shape = (config.num_layers,) + shape
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


DECODE_LAYOUTS = ("scan", "refs", "split", "packed")


def decode_layout(dtype=jnp.float32) -> str:
    """How generation lays out the decoder on this backend (each reads every weight once per decode step):
        "split"  accelerators, and the CPU in float32 with the decode kernel built: a per-layer cache, the
                 params' layers split once into per-layer buffers (`split_layers`), the projections that
                 share an input fused (`fuse_projections`). XLA's matmuls (and on the CPU the C++ kernel,
                 each Dense kernel passed as a `LayerRef`) read them in place. Under the scan, XLA copies
                 each layer's slice of the stack at every step: on an H200, Qwen2-7B shape, bfloat16, batch
                 1, that ran at 86 tokens/s (29 % of the copy bandwidth) against 206-216 split (69-73 %) and
                 241 split and fused (83 %). On the CPU, against "refs": the prompt's products need no
                 slice of the stack, and q/k/v and gate/up are one kernel call each (374M decoder, 32
                 tokens: batch 8 70.5 -> 82.7 tokens/s, batch 1 14.3 -> 15.5, the same tokens).
        "packed" the CPU in float32 with the decode kernel built: "split", and every Dense kernel of the
                 decoder (the LM head too) packed in column strips (`pack_kernels`, layers/packed.py), which
                 the kernel reads as one contiguous stream per thread: a 374M decoder's step's products 35 ->
                 27 ms at batch 1, 42 -> 32 ms at batch 8 against "split" (AVX-512 VM, 2026-11-28).
        "refs"   a per-layer cache over the stacked params, each Dense kernel a `LayerRef` into the stack
                 (the CPU's layout before "split"; still loadable with `decode_layout="refs"`).
        "scan"   elsewhere (CPU bfloat16, no C++ compiler): the stacked cache under nn.scan."""
    if jax.default_backend() != "cpu":
        return "split"
    return "packed" if jnp.dtype(dtype) == jnp.float32 and kernels.available() else "scan"


def unrolled_decode(dtype=jnp.float32, layout: str = None) -> bool:
    """Whether generation takes the unrolled path (`init_cache(..., per_layer=True)`)."""
    return (layout or decode_layout(dtype)) != "scan"


def split_layers(params):
    """Decoder params with `layers` as a tuple of per-layer trees (each leaf without the `layers` axis): the
    "split" decode layout. Numpy leaves are split into views (no copy), so split on the host before the
    params go to the device. Every Decoder call takes such params (unrolled); training needs them stacked."""
    stacked = params["layers"]
    if isinstance(stacked, (list, tuple)):
        return params
    n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    out = dict(params)
    out["layers"] = tuple(jax.tree_util.tree_map(lambda a: a[i], stacked) for i in range(n))
    return out


# Projections that read the same input, concatenated along their output axis for generation ("split" layout):
# (block, the checkpoint's projections in order, the fused name).
FUSED_PROJECTIONS = (("self_attn", ("q_proj", "k_proj", "v_proj"), "qkv_proj"),
                     ("mlp", ("gate_proj", "up_proj"), "gate_up_proj"))


def _concat_out(parts):
    """Concatenate kernels (in, out) / biases (out,) / QArrays along the output axis, on their device."""
    if isinstance(parts[0], QArray):
        return QArray(_concat_out([p.values for p in parts]), _concat_out([p.scale for p in parts]))
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts, axis=-1)
    return jnp.concatenate(parts, axis=-1)


def fuse_projections(params, place=None):
    """Split-layer decoder params (`split_layers`) with each layer's q, k, v projections concatenated into
    `self_attn/qkv_proj` and gate, up into `mlp/gate_up_proj` (kernels and biases along the output axis;
    layers/attention.py and layers/mlp.py take either form): the "split" decode layout. On a GPU, in a
    batch-1 decode step XLA rewrites a narrow product (k and v, 512 outputs at Qwen2-7B) into a broadcast
    multiply and a column reduction with a weight-sized temporary between them, 17 us a layer where one
    read of the weights takes 2 (H200, `benchmarks/decode_profile.py`); one product of the three reads them
    once, in one kernel. On the CPU a layer becomes 4 decode-kernel calls instead of 7. Mixtral's experts
    stay as they are. `place(layer_tree)`, if given, runs on each fused layer as it is made:
    `vllama_jax.load` fuses the checkpoint's numpy views on the host and moves each layer to the device at
    once, so neither side holds more than one extra layer."""
    layers = params["layers"]
    if not isinstance(layers, (list, tuple)):
        raise ValueError("fuse_projections: expected split layers (split_layers), got the stacked layout")
    fused = []
    for layer in nn.unbox(layers):  # a fresh init's logical-axis boxes: inference needs only the arrays
        layer = dict(layer)
        for block, names, fused_name in FUSED_PROJECTIONS:
            sub = layer.get(block)
            if sub is None or not all(n in sub for n in names):
                continue
            sub = dict(sub)
            parts = [sub.pop(n) for n in names]
            sub[fused_name] = {leaf: _concat_out([p[leaf] for p in parts]) for leaf in parts[0]}
            layer[block] = sub
        fused.append(place(layer) if place else layer)
    return {**params, "layers": tuple(fused)}


def unfuse_projections(layer):
    """One layer's params with `qkv_proj` / `gate_up_proj` split back into the checkpoint's projections (numpy)."""
    layer = dict(layer)
    for block, names, fused_name in FUSED_PROJECTIONS:
        if fused_name not in layer.get(block, {}):
            continue
        sub = dict(layer[block])
        whole = sub.pop(fused_name)
        if fused_name == "qkv_proj":  # q is as wide as o_proj's input; k and v share the rest
            nq = np.shape(sub["o_proj"]["kernel"])[0]
            width = np.shape(whole["kernel"])[-1]
            cuts = (nq, nq + (width - nq) // 2)
        else:
            cuts = (np.shape(whole["kernel"])[-1] // 2,)

        def cut(x):
            if isinstance(x, QArray):
                return [QArray(v, s) for v, s in zip(cut(x.values), cut(x.scale))]
            return np.split(np.asarray(x), cuts, axis=-1)
        pieces = {leaf: cut(x) for leaf, x in whole.items()}
        for i, name in enumerate(names):
            sub[name] = {leaf: pieces[leaf][i] for leaf in pieces}
        layer[block] = sub
    return layer


def pack_kernels(params, place=None):
    """Split-layer decoder params (`fuse_projections`) with every Dense kernel, the LM head's too, packed in
    column strips (layers/packed.py): the "packed" decode layout. Numpy kernels are packed on the host;
    `place(layer_tree)`, if given, runs on each packed layer (as in `fuse_projections`)."""
    if not isinstance(params["layers"], (list, tuple)):
        raise ValueError("pack_kernels: expected split layers (split_layers), got the stacked layout")
    is_leaf = lambda x: isinstance(x, (QArray, Packed))  # noqa: E731
    pack_tree = lambda tree: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda p, x: x if isinstance(x, Packed) or not is_decoder_kernel(p)
        or not (isinstance(x, QArray) or getattr(x, "ndim", 0) == 2) else pack(x), tree, is_leaf=is_leaf)
    layers = [pack_tree(nn.unbox(layer)) for layer in params["layers"]]
    out = {**params, "layers": tuple(place(layer) if place else layer for layer in layers)}
    if "lm_head" in out:
        out["lm_head"] = pack_tree(nn.unbox(out["lm_head"]))
    return out


def unpack_kernels(tree):
    """`tree` with every Packed kernel back in its (in, out) form (an array or a QArray)."""
    return jax.tree_util.tree_map(lambda x: unpack(x) if isinstance(x, Packed) else x, tree,
                                  is_leaf=lambda x: isinstance(x, (QArray, Packed)))


def stack_layers(params):
    """The inverse of `split_layers` (and of `fuse_projections` and `pack_kernels`), on the host (numpy): the
    stacked layout that export and training use."""
    params = unpack_kernels(params)
    layers = params["layers"]
    if not isinstance(layers, (list, tuple)):
        return params
    out = dict(params)
    layers = [unfuse_projections(layer) for layer in layers]
    out["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)
    return out


def layer_view(stacked_layers, index: Optional[int] = None):
    """Layer `index` of the stacked layer params: Dense kernels as `LayerRef`s (read in place by the decode
    kernel), everything else (norm scales, biases, Mixtral's router and experts) sliced. With no `index`,
    one split layer's params (`split_layers`), its Dense kernels as whole references."""
    def view(path, x):
        last = path[-1]
        kernel = getattr(last, "key", getattr(last, "name", None)) == "kernel"
        if index is None:
            return LayerRef.whole(x) if kernel and (isinstance(x, Packed) or getattr(x, "ndim", 0) == 2) else x
        if kernel and getattr(x, "ndim", 0) >= 3:
            return LayerRef(x, index)
        return jax.tree_util.tree_map(lambda a: a[index], x)
    return jax.tree_util.tree_map_with_path(view, stacked_layers, is_leaf=lambda x: isinstance(x, (QArray, Packed)))


def abstract_params(config: DecoderConfig, param_dtype=jnp.float32):
    """The param tree with jax.ShapeDtypeStruct leaves in their logical-axis boxes, without allocating
    anything: `nn.unbox` it for the shapes `checkpoints.to_params` expects; pass it as is to
    `sharding.logical_to_sharding`."""
    model = Decoder(config, param_dtype=param_dtype)
    return jax.eval_shape(lambda rng: model.init(rng, jnp.zeros((1, 1), jnp.int32))["params"], jax.random.key(0))


def hf_key_map(config: DecoderConfig) -> KeyMap:
    """HF checkpoint names (as released: `model.layers.{i}.*`, Mixtral experts one by one) -> our params.
    RoPE's `inv_freq` buffers that some saves carry hold no weights: ignored."""
    km = KeyMap().ignore("model.rotary_emb", "rotary_emb")
    km.add("model.embed_tokens.weight", ("embed_tokens", "embedding"))
    for i in range(config.num_layers):
        hf = f"model.layers.{i}."
        km.add(hf + "input_layernorm.weight", ("layers", "input_layernorm", "scale"), layer=i)
        km.add(hf + "post_attention_layernorm.weight", ("layers", "post_attention_layernorm", "scale"), layer=i)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            km.add(hf + f"self_attn.{proj}.weight", ("layers", "self_attn", proj, "kernel"), "linear", layer=i)
            if config.attention_bias and proj != "o_proj":
                km.add(hf + f"self_attn.{proj}.bias", ("layers", "self_attn", proj, "bias"), layer=i)
        if config.num_experts:
            moe = hf + "block_sparse_moe."
            km.add(moe + "gate.weight", ("layers", "block_sparse_moe", "gate", "kernel"), "linear", layer=i)
            for e in range(config.num_experts):
                for w in ("w1", "w2", "w3"):
                    km.add(moe + f"experts.{e}.{w}.weight", ("layers", "block_sparse_moe", "experts", w), "linear",
                           layer=(i, e))
        else:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                km.add(hf + f"mlp.{proj}.weight", ("layers", "mlp", proj, "kernel"), "linear", layer=i)
    km.add("model.norm.weight", ("norm", "scale"))
    if not config.tie_word_embeddings:
        km.add("lm_head.weight", ("lm_head", "kernel"), "linear")
    return km
