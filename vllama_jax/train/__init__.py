"""Training one phase of the VideoLLaMA 2 recipe (`vllama-jax train`, launch/README.md).

    config.py      the YAML config: frozen dataclasses, `--set key=value` overrides
    optimizer.py   AdamW + warmup/cosine on the trainable param paths; frozen ones carry no state
    loss.py        next-token cross-entropy
    step.py        the jitted train step: micro-batches, gradients of the trainable params, update
    state.py       the train state, its shardings, and where its params start
    flops.py       FLOPs of a step and peak FLOP/s per device kind (MFU)
    metrics.py     metrics.jsonl + TensorBoard
    loop.py        the loop: data, step, metrics, checkpoints, resume, preemption
"""
