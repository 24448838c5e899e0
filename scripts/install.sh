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
# The build is most of the install, so medgem keeps the wheel it built, keyed by the version and
# the build flags, and installs that one again instead of rebuilding (a second venv, a fresh clone,
# CI on a machine that installed before). Another version or other CMAKE_ARGS build anew.
llama_version="${MEDGEM_LLAMA_CPP_VERSION:-0.3.36}"
flags_key=$(printf '%s' "$CMAKE_ARGS" | sha256sum | cut -c1-12)
wheels="${MEDGEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/medgem}/wheels/llama-cpp-python-$llama_version-$flags_key"
wheel=$(ls "$wheels"/llama_cpp_python-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $llama_version from source with runtime CPU dispatch: about 11 minutes on 2 cores of a recent CPU, up to 20 on an older AVX2-only one (kept in $wheels for the next install)"
  started=$SECONDS
  rm -rf "$wheels.partial" && mkdir -p "$wheels.partial"
  python -m pip wheel --quiet --no-deps --no-binary llama-cpp-python -w "$wheels.partial" "llama-cpp-python==$llama_version"
  rm -rf "$wheels" && mv "$wheels.partial" "$wheels"
  wheel=$(ls "$wheels"/llama_cpp_python-*.whl | head -n 1)
  echo "built in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
else
  echo "reusing the llama-cpp-python $llama_version wheel built before ($wheel)"
fi
python -m pip install --quiet "$wheel"
python -m pip install --quiet -e ".[${extras}]"
if ! python -c "from medgem.engines.llamacpp.native import cpu_variants; raise SystemExit(not cpu_variants())"; then
  echo "error: llama-cpp-python has no runtime CPU dispatch (one CPU backend only); remove $wheels and run this script again" >&2
  exit 1
fi
# The web page is tested in a real browser: Debian's chromium (never a browser download).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Debian's chromium (sudo apt-get install chromium) for the browser tests"
  fi
fi
# A real PACS for the PACS tests: Debian's Orthanc with its DICOMweb plugin (bookworm: 1.10 and 1.7).
if [ ! -x /usr/sbin/Orthanc ] || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null
  else
    echo "note: install Debian's Orthanc (sudo apt-get install orthanc orthanc-dicomweb) for the PACS tests"
  fi
fi
# Where this CPU runs the image encoder fastest (llama.cpp's clip, or PyTorch and in which
# precision), measured once now (~25 s on 2 cores) so the first image question already takes it
# (on an AVX2-only Zen 3: PyTorch int8, 1.3x the clip's speed); until it is measured, `auto` means
# the clip. Kept per CPU kind in the medgem cache; `medgem doctor --measure` measures again.
# MEDGEM_MEASURE=0 skips it (an image built on one machine and run on another).
if [ "${MEDGEM_MEASURE:-1}" != 0 ]; then
  if encoder=$("$venv/bin/medgem" doctor --measure --json 2>/dev/null \
        | python -c "import json, sys; v = json.load(sys.stdin)['llamacpp'].get('vision') or {}; print(v.get('why') or '')"); then
    echo "image encoder here: ${encoder:-not measured (llama.cpp does not run on this CPU)}"
  else
    echo "note: the image encoder was not measured here (run 'medgem doctor --measure' to see why); images use llama.cpp's clip"
  fi
fi
echo "medgem installed in $venv: activate with '. $venv/bin/activate'"
