"""Training data: VideoLLaMA 2 annotation files -> this process's fixed-shape batches, with Grain.

    annotations.py   JSON / JSONL annotation files -> rows (a malformed row is kept as an error row)
    samples.py       row -> sample (media decode, chat template, tokens, labels); samples -> batch
    pipeline.py      the Grain pipeline: shuffle, per-epoch reshuffle, mixing, per-process batches, prefetch
    cache.py         pre-decoded samples in ArrayRecord shards (`vllama-jax cache`); records.py: their format
    synthetic.py     a tiny generated dataset of real media files, for the smoke run and tests
    synthetic_qa.py  the demo's questions about synthetic scenes (synthetic_scenes.py, mp4.py)
    demo_data.py     the demo's data side (vllama_jax/demo), wired by the `demo` command
    from_config.py   a training config's `data` section -> the pipeline
"""
