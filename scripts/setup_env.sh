#!/usr/bin/env bash
# Creates or updates ./.venv with the pinned requirements (and the test extras with --test).
# Idempotent: it reinstalls only when a requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
want=requirements.txt
[ "${1:-}" = "--test" ] && want=requirements-test.txt
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.installed-$(cat requirements.txt "$want" requirements-libtpu.txt setup.py | sha256sum | cut -c1-16)-$(basename "$want" .txt)"
if [ ! -f "$stamp" ]; then
  echo "installing $want into .venv (a few minutes the first time)..."
  .venv/bin/python -m pip install -q -r "$want"
  .venv/bin/python -m pip install -q --no-deps -e .
  if [ "$want" = requirements-test.txt ]; then
    # libtpu for `plan` and its tests, outside the import path: see requirements-libtpu.txt.
    .venv/bin/python -m pip uninstall -q -y libtpu 2>/dev/null || true
    .venv/bin/python -m pip install -q --no-deps --upgrade --target .venv/libtpu -r requirements-libtpu.txt
  fi
  touch "$stamp"
fi
