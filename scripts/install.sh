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
# llama.cpp is built from source (PyPI has no Linux wheels) as a portable build: ggml's runtime
# CPU dispatch puts one CPU backend per x86-64 level (SSE4.2 ... AVX-512 BF16, AMX) in the wheel
# and loads the best one this CPU runs, so a wheel cached or copied to another machine never
# dies with SIGILL. See README "llama.cpp on every CPU".
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_BACKEND_DIR:STRING=llama_cpp/lib}"
python -m pip install --quiet -e ".[${extras}]"
# pip reuses a wheel it built before, whatever CMAKE_ARGS say: replace a single-CPU build.
if ! python -c "from medgem.engines.llamacpp_native import cpu_variants; raise SystemExit(not cpu_variants())"; then
  version=$(python -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))")
  echo "rebuilding llama-cpp-python $version with runtime CPU dispatch (about 15 minutes on 2 cores)"
  python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==$version"
fi
# The web page is tested in a real browser: Debian's chromium (never a browser download).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Debian's chromium (sudo apt-get install chromium) for the browser tests"
  fi
fi
echo "medgem installed in $venv: activate with '. $venv/bin/activate'"
