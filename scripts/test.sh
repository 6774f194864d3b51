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
# One pytest worker per core (pytest-xdist), a test file per worker: most tests wait on XLA's
# single-threaded compiler, so two workers on two cores take ~the time of the longest half.
# At most 4 (each worker holds JAX and PyTorch, ~2 GB); VLLAMA_TEST_WORKERS=0 runs in this process
# (a debugger, -x, -s).
cores=$(nproc 2>/dev/null || echo 2)
workers=${VLLAMA_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
parallel=()
[ "$workers" != 0 ] && parallel=(-n "$workers" --dist loadfile)
.venv/bin/python -m pytest ${parallel[@]+"${parallel[@]}"} ${targets[@]+"${targets[@]}"} "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
[ $rc -eq 5 ] && echo "no tests were collected" >&2
exit $rc
