#!/usr/bin/env bash
# The CUDA runs behind the README's GPU figures (issue 13). Needs one NVIDIA GPU and sealgguf importable with
# its C++ engine built (PYTHONPATH or an install). Everything prints to stdout; each step has a time limit and
# a failing step does not stop the next.
#   bash tools/cuda_checks.sh shape                      # plan vs measured step of an 8B shape at 8K and 32K
#   bash tools/cuda_checks.sh bench MODEL LENGTHS        # bench_tune in bf16, fp32 beside it at the first length
#   bash tools/cuda_checks.sh tune MODEL LENGTH OUTDIR   # the default recipe and --exact-fold, 50 samples
#   bash tools/cuda_checks.sh offload MODEL LENGTH OUTDIR GPU_MIB
#       # --device-map auto with GPU_MIB of weights on the GPU and the rest offloaded to CPU RAM, against the
#       # same run on the GPU alone (8 samples, checkpointing on in both): time, peak and the scales' difference
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
verb="$1"; shift

run() {  # run LIMIT_S CMD...: time it, say how it ended
  local limit="$1" t0=$SECONDS rc; shift
  echo "\$ $*"
  timeout "$limit" "$@"; rc=$?
  echo "[rc $rc, $((SECONDS - t0)) s]"
}

case "$verb" in
  shape)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
    run 240 "$PY" tools/bench_plan_shape.py --lengths 8192,32768 --ckpt on,off --repeat 2 ;;
  bench)
    model="$1" lengths="$2"
    run 150 "$PY" tools/bench_tune.py --model "$model" --device cuda --lengths "${lengths%%,*}" --dtypes bf16,fp32 \
      --repeat 3
    [ "$lengths" = "${lengths#*,}" ] || run 200 "$PY" tools/bench_tune.py --model "$model" --device cuda \
      --lengths "${lengths#*,}" --dtypes bf16 --repeat 3 ;;
  tune)
    model="$1" length="$2" out="$3"; name="$(basename "${model%.gguf}")-$length"
    run 150 "$PY" -m sealgguf -q tune "$model" -o "$out/$name-C.safetensors" --length "$length" --device cuda
    run 150 "$PY" -m sealgguf -q tune "$model" -o "$out/$name-C-exact.safetensors" --length "$length" \
      --device cuda --exact-fold ;;
  offload)
    model="$1" length="$2" out="$3" gpu="$4"
    common=(-q tune "$model" --length "$length" --samples 8 --val-samples 0 --dtype bf16 --device cuda)
    run 120 "$PY" -m sealgguf "${common[@]}" -o "$out/gpu.safetensors" --checkpointing on
    run 180 "$PY" -m sealgguf "${common[@]}" -o "$out/offload.safetensors" --device-map auto \
      --max-memory "0=${gpu}MiB,cpu=64GiB"
    "$PY" - "$out/gpu.safetensors" "$out/offload.safetensors" <<'EOF'
import sys
from safetensors.numpy import load_file
a, b = (load_file(p) for p in sys.argv[1:])
for k in a:
    d = abs(a[k].astype("float64") - b[k]).max()
    print(f"scales {k} {a[k].shape}: max |gpu - offload| = {d:.2e}")
EOF
    ;;
  *) echo "usage: bash tools/cuda_checks.sh shape|bench|tune|offload ..." >&2; exit 2 ;;
esac
