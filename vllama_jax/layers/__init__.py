"""Building blocks shared by every model: dense layers, norms, attention, RoPE, MLPs, mixture of experts.

Every param is created with `nn.with_logical_partitioning`, so `sharding.py` can map it onto a mesh.
Logical axis names: `embed` (model width), `mlp` (feed-forward width), `heads` (q heads x head_dim),
`kv` (kv heads x head_dim), `vocab`, `expert`, `layers` (the scanned stack), `conv_in` / `conv_out` /
`conv_k` (convolutions), `norm` (norm scales and biases).
"""
