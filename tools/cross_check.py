"""Does the engine give the same bytes on another CPU? Builds the engine (cpp/) with a cross compiler (the flags of
CMakeLists.txt, without -march=native) and runs tools/quantize_driver.cpp under qemu-user on test data (zero,
constant, one-signed, outlier, heavy-tailed and tiny blocks, and one of Gemma 3's attn_output tensors scaled per
channel): every quantized type's bytes against ggml's own on this machine (llama-cpp-python's libggml-base), and
the fold of that tensor with per-column scales (both candidates, refit included) against this machine's engine.

    apt-get install -y crossbuild-essential-arm64 qemu-user   # Debian; once
    .venv/bin/python tools/cross_check.py [--target aarch64-linux-gnu] [--march armv8-a,armv8.2-a+sve]

Exit status 0 when every type matches for every -march, 1 otherwise, 3 without the cross tools.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["-std=c++17", "-O3", "-fno-fast-math", "-ffp-contract=off", "-fopenmp-simd", "-static"]  # as CMakeLists.txt
TYPES = [2, 3, 6, 7, 8, 10, 11, 12, 13, 14]  # Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K


def test_data() -> np.ndarray:
    from sealgguf import _core
    from sealgguf.fold import open_gguf
    from sealgguf.models import resolve

    rng = np.random.default_rng(3)
    x = np.concatenate([(rng.standard_normal((32, 1024)) * rng.uniform(1e-3, 0.2, (32, 1))),
                        rng.standard_t(1.5, (32, 1024)) * 0.02,
                        rng.standard_normal((8, 1024)) * 1e-6]).astype(np.float32)
    x[1, :256], x[2, :256], x[3, 5], x[4] = 0.0, 0.5, 40.0, np.abs(x[4])
    src = open_gguf(resolve("gemma3"))
    t = next(t for t in src.tensors if t.name == "blk.3.attn_output.weight")
    real = _core.dequantize(src.tensor_data(t), t.type_id, int(t.shape[0]))[:64, :1024]
    return np.concatenate([x, real * rng.uniform(0.5, 1.5, 1024).astype(np.float32)])


def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    import ggml_ref

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="aarch64-linux-gnu")
    ap.add_argument("--march", default="armv8-a,armv8.2-a+sve", help="comma-separated -march values to build")
    args = ap.parse_args()
    cxx, qemu = f"{args.target}-g++", "qemu-" + args.target.split("-")[0]
    for tool in (cxx, qemu):
        if not shutil.which(tool):
            print(f"{tool} not found (apt-get install -y crossbuild-essential-arm64 qemu-user)", file=sys.stderr)
            return 3
    from sealgguf import _core

    x = test_data()
    scales = np.random.default_rng(4).uniform(0.5, 1.5, x.shape[1]).astype(np.float32)
    ok = True
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        x.tofile(d / "in.f32")
        scales.tofile(d / "scales.f32")
        for march in args.march.split(","):
            exe = d / f"driver-{march}"
            engine = [str(ROOT / "cpp" / f) for f in ("fp16.cpp", "quants.cpp", "refit.cpp", "fold.cpp")]
            subprocess.run([cxx, *FLAGS, f"-march={march}", f"-I{ROOT / 'cpp'}", str(ROOT / "tools/quantize_driver.cpp"),
                            *engine, "-o", str(exe), "-pthread"], check=True)
            subprocess.run([qemu, str(exe), str(d / "in.f32"), *map(str, x.shape), str(d / "scales.f32"), str(d / "out"),
                            *map(str, TYPES)], check=True)
            differ, fold_differ = [], []
            for t in TYPES:
                theirs = ggml_ref.quantize(x, t).reshape(-1)
                if not np.array_equal(np.fromfile(d / f"out.{t}.quantized", np.uint8), theirs):
                    differ.append(ggml_ref.TYPES[t][0])
                here = _core.fold(theirs, t, x.shape[1], scales, 1)[0].reshape(-1)
                if not np.array_equal(np.fromfile(d / f"out.{t}.folded", np.uint8), here):
                    fold_differ.append(ggml_ref.TYPES[t][0])
            ok &= not differ and not fold_differ
            print(f"{args.target} -march={march}: {x.shape[0]} rows x {x.shape[1]}; types whose quantized bytes differ "
                  f"from ggml's: {', '.join(differ) or 'none'}; whose folds differ from this CPU's: "
                  f"{', '.join(fold_differ) or 'none'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
