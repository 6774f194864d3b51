"""The README's main job (`vllama-jax demo`): a tiny VideoLLaMA 2 trained from scratch on synthetic
audio-visual QA on a CPU, then asked about held-out clips through the public load / answer path.

    run.py        the job end to end, its default and --quick settings, results.json
    recipe.py     the phases (launch/configs/demo_*.yaml) through vllama_jax.train, the release checkpoint
    evaluate.py   held-out questions through `vllama-jax answer`'s batched path, accuracy per kind
    report.py     the terminal table, plots, example frames
    tokenizer.py  the word-level tokenizer of the demo's text
"""
