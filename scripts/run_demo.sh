#!/usr/bin/env bash
# The main job: sets up .venv, then runs the embedded end-to-end demo (synthetic audio-visual QA):
#   bash scripts/run_demo.sh [--quick] [OUT]      (OUT: out/demo; other --options pass to `vllama-jax demo`)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
out=out/demo
opts=()
for a in "$@"; do
  case "$a" in
    -*) opts+=("$a") ;;
    *) out="$a" ;;
  esac
done
# ${opts[@]+...}: an empty array is not "unbound" under set -u on older bash.
.venv/bin/python -m vllama_jax demo --out "$out" ${opts[@]+"${opts[@]}"}
