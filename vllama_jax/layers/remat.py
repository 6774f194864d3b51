"""Rematerialisation of a layer class for training: what its backward pass recomputes instead of keeping.

    remat(layer_cls, policy) -> layer_cls wrapped by `nn.remat` (or unchanged for "none")

`policy`: "none" (keep every activation), "full" (keep only the layer's inputs, recompute the rest in the
backward pass), or the name of a `jax.checkpoint_policies` policy (e.g. `dots_saveable`,
`dots_with_no_batch_dims_saveable`). The training config's `model.remat` reaches every scanned layer
stack that trains: the decoder's and BEATs'.
"""
import flax.linen as nn
import jax


def remat(layer_cls, policy: str):
    if policy == "none":
        return layer_cls
    if policy == "full":
        return nn.remat(layer_cls, prevent_cse=False)
    if not hasattr(jax.checkpoint_policies, policy):
        raise ValueError(f"remat_policy '{policy}' is not 'none', 'full' or a jax.checkpoint_policies name")
    return nn.remat(layer_cls, policy=getattr(jax.checkpoint_policies, policy), prevent_cse=False)
