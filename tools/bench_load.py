"""Benchmark loading a GGUF into the tuner: transformers alone against sealgguf's fast path (one parse per
file, the C++ dequantizer), side by side, interleaved, each load in a fresh process so its peak RSS is
its own. Also checks that both give the same weights (max abs difference over every parameter).

    .venv/bin/python tools/bench_load.py [--models smollm2,gemma3] [--dtypes fp32,bf16] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(model: str, dtype: str, fast: bool, dump: str) -> dict:
    import torch
    from transformers.utils import logging

    from sealgguf.models import resolve
    from sealgguf.tune.model import load

    logging.disable_progress_bar()
    t0 = time.perf_counter()
    lm = load(resolve(model), "cpu", dtype=dtype, fast=fast)
    seconds = time.perf_counter() - t0
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    size = sum(p.numel() * p.element_size() for p in lm.model.parameters()) / 2**20
    if dump:
        torch.save({k: v for k, v in lm.model.state_dict().items()}, dump)
    return {"seconds": seconds, "peak_mib": hwm, "model_mib": size}


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
    import tempfile

    import torch

    tmp = tempfile.mkdtemp()
    print("| model | dtype | transformers s | fast s | speed-up | peak RSS MiB: transformers | fast | model in dtype "
          "| fast peak / model | same weights |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for dtype in args.dtypes.split(","):
            runs = {"0": [], "1": []}
            for i in range(args.repeat):
                for fast in ("0", "1"):
                    dump = f"{tmp}/{fast}.pt" if i == 0 else ""
                    r = subprocess.run([sys.executable, __file__, "--child", model, dtype, fast, "--dump", dump],
                                       capture_output=True, text=True, check=True)
                    runs[fast].append(json.loads(r.stdout.strip().splitlines()[-1]))
            a, b = torch.load(f"{tmp}/0.pt"), torch.load(f"{tmp}/1.pt")
            diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
            slow, fast = (min(r["seconds"] for r in runs[k]) for k in "01")
            peak0, peak1 = (min(r["peak_mib"] for r in runs[k]) for k in "01")
            size = runs["1"][0]["model_mib"]
            print(f"| {model} | {dtype} | {slow:.1f} | {fast:.1f} | {slow / fast:.1f}x | {peak0:.0f} | {peak1:.0f} | "
                  f"{size:.0f} | {peak1 / size:.2f} | {'yes' if diff == 0 else f'max diff {diff:.2e}'} |", flush=True)


if __name__ == "__main__":
    main()
