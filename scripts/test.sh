#!/usr/bin/env bash
# The test command: the whole suite (browser tests need Debian's chromium, installed by install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. "${MEDGEM_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1
exec python -m pytest -q -p no:cacheprovider "$@"
