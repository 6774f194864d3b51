#!/usr/bin/env bash
# The test suite: sets up .venv with the test extras, then runs pytest on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
export JAX_PLATFORMS=cpu
export TPU_LIBRARY_PATH="$PWD/.venv/libtpu/libtpu/libtpu.so"  # for `plan` (tests/test_plan.py) only
set +e
# `bash scripts/test.sh tests/test_decoder.py -k mixtral`: given paths replace the default `tests`.
targets=(tests)
for a in "$@"; do [ -e "${a%%::*}" ] && targets=(); done
.venv/bin/python -m pytest "${targets[@]}" "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
[ $rc -eq 5 ] && echo "no tests were collected" >&2
exit $rc
