"""Benchmark loading a GGUF into the tuner: transformers alone against sealgguf's fast path (one parse per
file, the C++ dequantizer), side by side, interleaved, each load in a fresh process so its peak RSS is
its own. The fast path is timed twice: a first load (an empty conversion cache, so transformers converts the
config and tokenizer, as on a fresh machine) and a cached one (the conversion saved by the first; every later
load of the same file). Also checks that all three give the same weights (every parameter, bit for bit).

    .venv/bin/python tools/bench_load.py [--models smollm2,gemma3] [--dtypes fp32,bf16] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


MODES = ("transformers", "first", "cached")


def child(model: str, dtype: str, fast: bool, dump: str) -> dict:
    import torch
    from transformers.utils import logging

    from sealgguf.hardware import process_mib
    from sealgguf.models import resolve
    from sealgguf.tune.model import load

    logging.disable_progress_bar()
    start = process_mib("VmRSS")  # the interpreter with torch and transformers imported, before the load
    t0 = time.perf_counter()
    lm = load(resolve(model), "cpu", dtype=dtype, fast=fast)
    seconds = time.perf_counter() - t0
    hwm = process_mib("VmHWM")
    size = sum(p.numel() * p.element_size() for p in lm.model.parameters()) / 2**20
    if dump:
        torch.save({k: v for k, v in lm.model.state_dict().items()}, dump)
    return {"seconds": seconds, "peak_mib": hwm, "start_mib": start, "model_mib": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--dump", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        model, dtype, fast = args.child
        print(json.dumps(child(model, dtype, fast == "1", args.dump)))
        return
    import os
    import shutil
    import tempfile

    import torch

    tmp = tempfile.mkdtemp()
    print("| model | dtype | transformers s | fast, first s | fast, cached s | speed-up first | cached | peak RSS MiB: "
          "transformers | first | cached | RSS at start | model in dtype | cached peak / model | (cached peak - start) "
          "/ model | same weights |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for dtype in args.dtypes.split(","):
            runs: dict[str, list[dict]] = {m: [] for m in MODES}
            filled = tempfile.mkdtemp(dir=tmp)  # the conversion cache the first "first" load fills
            for i in range(args.repeat):
                for mode in MODES:
                    cache = filled if mode == "cached" or i == 0 else tempfile.mkdtemp(dir=tmp)
                    dump = f"{tmp}/{mode}.pt" if i == 0 else ""
                    r = subprocess.run([sys.executable, __file__, "--child", model, dtype,
                                        "0" if mode == "transformers" else "1", "--dump", dump],
                                       capture_output=True, text=True, check=True,
                                       env={**os.environ, "SEALGGUF_CACHE": cache})
                    runs[mode].append(json.loads(r.stdout.strip().splitlines()[-1]))
            sds = [torch.load(f"{tmp}/{mode}.pt") for mode in MODES]
            same = all(sd.keys() == sds[0].keys() and all(torch.equal(sd[k], sds[0][k]) for k in sd) for sd in sds)
            secs = {m: min(r["seconds"] for r in runs[m]) for m in MODES}
            peak = {m: min(r["peak_mib"] for r in runs[m]) for m in MODES}
            start = min(r["start_mib"] for r in runs["cached"])
            size = runs["cached"][0]["model_mib"]
            print(f"| {model} | {dtype} | {secs['transformers']:.1f} | {secs['first']:.1f} | {secs['cached']:.1f} | "
                  f"{secs['transformers'] / secs['first']:.1f}x | {secs['transformers'] / secs['cached']:.1f}x | "
                  f"{peak['transformers']:.0f} | {peak['first']:.0f} | {peak['cached']:.0f} | {start:.0f} | "
                  f"{size:.0f} | "
                  f"{peak['cached'] / size:.2f} | {(peak['cached'] - start) / size:.2f} | {'yes' if same else 'NO'} |",
                  flush=True)
    shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    main()
