#!/usr/bin/env bash
# Install medgem and everything its tests need into .venv (or $MEDGEM_VENV).
# Torch is installed first as the pinned CPU build on CPU-only machines, so no CUDA build is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MEDGEM_VENV:-.venv}"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  python -m pip install --quiet "torch>=2.4"
  extras="dev,cuda"
else
  python -m pip install --quiet "torch==2.13.0"
  extras="dev"
fi
python -m pip install --quiet -e ".[${extras}]"
# The web page is tested in a real browser: Debian's chromium (never a browser download).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Debian's chromium (sudo apt-get install chromium) for the browser tests"
  fi
fi
echo "medgem installed in $venv: activate with '. $venv/bin/activate'"
