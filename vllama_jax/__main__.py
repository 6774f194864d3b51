"""`python -m vllama_jax ...`: the same as the `vllama-jax` console command."""
import sys

from vllama_jax.cli import main

sys.exit(main())
