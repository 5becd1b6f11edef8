"""Prompt-processing speed of llama.cpp on the bundled models, with and without the extra buffer types
(weight repacking) that the AMX fallback in sealgguf.eval.backend turns off. Both settings are
measured in one run, interleaved, best of --repeats.

    .venv/bin/python tools/bench_backend.py [--tokens 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

from sealgguf.eval import backend
from sealgguf.models import resolve


def pp_tokens_per_s(path, n_tokens: int, extra_bufts: bool, threads: int) -> float:
    guard = contextlib.nullcontext() if extra_bufts else backend._no_extra_buffer_types()
    from llama_cpp import Llama

    with guard:
        llm = Llama(model_path=str(path), n_ctx=n_tokens + 8, n_batch=512, n_ubatch=512, n_threads=threads,
                    verbose=False)
    ids = (llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 200, add_bos=True))[:n_tokens]
    llm.eval(ids[:8])  # warm up
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    dt = time.perf_counter() - t0
    llm.close()
    return len(ids) / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    print(f"llama.cpp: {backend.system_info().strip()}")
    print(f"AMX backend compiled in: {backend.has_amx_backend()}; CPU has AMX-INT8: {backend.cpu_has_amx()}\n")
    print(f"| model | pp tok/s, extra buffer types on | off (AMX fallback) | off / on |")
    print("|---|---|---|---|")
    for name in ("smollm2", "gemma3"):
        path = resolve(name)
        best = {True: 0.0, False: 0.0}
        for _ in range(args.repeats):
            for flag in (True, False):
                best[flag] = max(best[flag], pp_tokens_per_s(path, args.tokens, flag, args.threads))
        print(f"| {name} ({path.name}) | {best[True]:.0f} | {best[False]:.0f} | {best[False] / best[True]:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
