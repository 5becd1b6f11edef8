"""Prompt-processing speed of llama.cpp on the bundled models: this build, with and without the extra
buffer types (weight repacking) that the AMX fallback in sealgguf.eval.backend turns off, and optionally
another llama-cpp-python build (--other-python, e.g. a venv with the build made before the AMX fix).
Every measurement runs in a fresh process; the settings are interleaved; best of --repeats.

    .venv/bin/python tools/bench_backend.py [--tokens 512] [--repeats 3] [--other-python /tmp/venv/bin/python]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from sealgguf import hardware
from sealgguf.eval import backend
from sealgguf.models import resolve

# Runs under either interpreter, so it imports nothing of sealgguf.
MEASURE = r"""
import sys, time
import llama_cpp, llama_cpp.llama as lm
path, n, extra, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
if not extra:
    original = lm.llama_cpp.llama_model_default_params
    def params():
        p = original(); p.use_extra_bufts = False; return p
    lm.llama_cpp.llama_model_default_params = params
llm = lm.Llama(model_path=path, n_ctx=n + 8, n_batch=512, n_ubatch=512, n_threads=threads, verbose=False)
ids = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 200, add_bos=True)[:n]
llm.eval(ids[:8]); llm.reset()
t0 = time.perf_counter(); llm.eval(ids); dt = time.perf_counter() - t0
amx = "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode()
print(f"{len(ids) / dt:.1f} {int(amx)}")
"""


def measure(python: str, path, n: int, extra: bool, threads: int) -> tuple[float, bool]:
    out = subprocess.run([python, "-c", MEASURE, str(path), str(n), "1" if extra else "0", str(threads)],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), out[1] == "1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--other-python", help="interpreter of another llama-cpp-python build to compare")
    args = ap.parse_args()
    print(f"llama.cpp: {backend.system_info().strip()}")
    print(f"CPU has AMX-INT8: {hardware.cpu_has_amx()}; {args.tokens}-token prompt, {args.threads} threads, "
          f"best of {args.repeats}\n")
    builds = {"this build": sys.executable, **({"other build": args.other_python} if args.other_python else {})}
    print("| model | build | AMX backend | pp tok/s, extra buffer types on | off (AMX fallback) | off / on |")
    print("|---|---|---|---|---|---|")
    for name in ("smollm2", "gemma3"):
        path = resolve(name)
        best = {(b, e): 0.0 for b in builds for e in (True, False)}
        amx = {}
        for _ in range(args.repeats):
            for b, python in builds.items():
                for e in (True, False):
                    tps, amx[b] = measure(python, path, args.tokens, e, args.threads)
                    best[b, e] = max(best[b, e], tps)
        for b in builds:
            on, off = best[b, True], best[b, False]
            print(f"| {name} | {b} | {'yes' if amx[b] else 'no'} | {on:.0f} | {off:.0f} | {off / on:.2f} |", flush=True)


if __name__ == "__main__":
    main()
