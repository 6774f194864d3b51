"""Benchmarks of vllama-jax: side by side with the PyTorch reference (`run_bench.py`, behind `vllama-jax bench`)."""
