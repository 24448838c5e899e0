#!/usr/bin/env bash
# The test command: the whole suite (browser tests need Debian's chromium, installed by install.sh).
# One pytest-xdist worker per core (at most four; MEDGEM_TEST_WORKERS overrides, 0 runs serially),
# each test file on one worker so its module-scoped servers and models are built once; each worker
# is pinned to its own cores (tests/conftest.py). The 20 slowest tests are listed at the end so a
# slowdown shows the day it lands.
set -euo pipefail
cd "$(dirname "$0")/.."
. "${MEDGEM_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1
cores=$(nproc)
workers="${MEDGEM_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}"
parallel=()
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
exec python -m pytest -q -p no:cacheprovider "${parallel[@]}" --durations=20 "$@"
