#!/usr/bin/env bash
# The test suite: sets up .venv with the test extras, then runs pytest on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
export JAX_PLATFORMS=cpu
set +e
.venv/bin/python -m pytest tests "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
[ $rc -eq 5 ] && echo "no tests were collected" >&2
exit $rc
