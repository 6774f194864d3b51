#!/usr/bin/env bash
# The main job: sets up .venv, then runs the embedded end-to-end demo (synthetic audio-visual QA).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m vllama_jax demo --out "${1:-out/demo}"
