"""Benchmark a SEAL tuning step against a forward pass on the same sample, and its memory.

For each length, dtype and mode (one child process each, so peak memory is its own: freed pages stay
with the process): tokens/s of a no-grad forward pass and of a tuning step (forward + backward to the
scales), with and without activation checkpointing, and the peak memory above the loaded model
(CPU: VmHWM after a reset of the high-water mark; CUDA: max_memory_allocated). Every dtype after the
first is compared with the first, side by side in one run: step speed ratio, and the cosine between
their gradients of the scales on the same sample (SEAL-C, so every channel counts).

    .venv/bin/python tools/bench_tune.py [--model smollm2] [--lengths 1024,2048,4096] [--device auto]
                                         [--dtypes fp32,bf16]

The memory and time plan's estimates (sealgguf.tune.plan, no --keep) are printed beside the measured step:
"plan MiB" is its peak above the loaded weights, "plan s/step" its time at the matmul and attention rates it measures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(model: str, length: int, device: str, repeat: int, ckpt: bool, dtype: str, grad_out: str) -> dict:
    import torch
    from transformers.utils import logging

    from sealgguf.hardware import process_mib
    from sealgguf.models import resolve
    from sealgguf.tune import pick_device
    from sealgguf.tune.data import make_examples
    from sealgguf.tune.model import SealScales, enable_checkpointing, load
    from sealgguf.tune.trainer import answer_loss

    logging.disable_progress_bar()
    device = pick_device(device)
    lm = load(resolve(model), device, dtype=dtype)
    ex = make_examples(["lines"], 1, length, lm.encoder, "train")[0]
    seal = SealScales(lm.layout, "channel").to(device).attach(lm.model)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def reset_peak():
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2**20
        open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
        return process_mib("VmRSS")

    def peak(base):
        return (torch.cuda.max_memory_allocated() / 2**20 if cuda else process_mib("VmHWM")) - base

    def timed(fn):
        fn()  # warm-up
        sync()
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    def forward():
        with torch.no_grad():
            answer_loss(lm.model, ex, device)

    def step():
        loss, _ = answer_loss(lm.model, ex, device)
        loss.backward()
        seal.scales.grad = None

    out = {"length": int(ex.ids.numel()), "device": device, "dtype": dtype}
    from sealgguf.tune.plan import make_plan, shape_from_gguf  # the plan's estimate, beside what is measured

    plan = make_plan(shape_from_gguf(resolve(model)), out["length"], dtype, device, ckpt, keep=False)
    out["plan_step_mb"] = (plan.peak - plan.parts["weights"]) / 2**20
    out["plan_step_s"] = plan.seconds_per_step
    lm.model.eval()
    base = reset_peak()
    out["forward_s"] = timed(forward)
    out["forward_peak_mb"] = peak(base)
    if ckpt:
        enable_checkpointing(lm.model)
    lm.model.train()
    base = reset_peak()
    out["step_s"] = timed(step)
    out["step_peak_mb"] = peak(base)
    if grad_out:
        loss, _ = answer_loss(lm.model, ex, device)
        loss.backward()
        import numpy as np

        np.save(grad_out, seal.scales.grad.float().cpu().numpy())
    lm.model.eval()
    return out


def main() -> None:
    import tempfile

    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--lengths", default="1024,2048,4096")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, bf16, fp16 (default fp32)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--grad-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.child, args.device, args.repeat, bool(args.ckpt), args.dtype,
                                 args.grad_out)))
        return
    dtypes = args.dtypes.split(",")
    print(f"{'tokens':>6s} {'dtype':>5s} {'device':>6s} {'fwd tok/s':>10s} {'step tok/s':>11s} {'ckpt':>6s} "
          f"{'step/fwd':>9s} {'peak MiB fwd':>13s} {'step':>7s} {'step ckpt':>10s} {'vs ' + dtypes[0]:>8s} "
          f"{'grad cos':>9s} {'plan MiB step':>14s} {'ckpt':>6s} {'plan s/step':>12s} {'ckpt':>6s}")
    tmp = tempfile.mkdtemp()
    for length in (int(x) for x in args.lengths.split(",")):
        first = None
        for dtype in dtypes:
            m = {}
            for ckpt in (0, 1):
                grad = f"{tmp}/{dtype}-{length}.npy" if not ckpt else ""
                r = subprocess.run([sys.executable, __file__, "--model", args.model, "--device", args.device,
                                    "--repeat", str(args.repeat), "--child", str(length), "--ckpt", str(ckpt),
                                    "--dtype", dtype, "--grad-out", grad], capture_output=True, text=True)
                if r.returncode:
                    sys.exit(f"{length} tokens, {dtype}, checkpointing {ckpt}: the child failed\n{r.stderr[-3000:]}")
                m[ckpt] = json.loads(r.stdout.strip().splitlines()[-1])
            g = np.load(f"{tmp}/{dtype}-{length}.npy").ravel().astype(np.float64)
            first = first or (m, g)
            g0 = first[1]
            cos = float(g @ g0 / (np.linalg.norm(g) * np.linalg.norm(g0)))
            n, fwd = m[0]["length"], m[0]["forward_s"]
            print(f"{n:6d} {dtype:>5s} {m[0]['device']:>6s} {n / fwd:10.0f} {n / m[0]['step_s']:11.0f} "
                  f"{n / m[1]['step_s']:6.0f} {m[0]['step_s'] / fwd:9.2f} "
                  f"{m[0]['forward_peak_mb']:13.0f} {m[0]['step_peak_mb']:7.0f} {m[1]['step_peak_mb']:10.0f} "
                  f"{first[0][0]['step_s'] / m[0]['step_s']:8.2f} {cos:9.4f} {m[0]['plan_step_mb']:14.0f} "
                  f"{m[1]['plan_step_mb']:6.0f} {m[0]['plan_step_s']:12.2f} {m[1]['plan_step_s']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
