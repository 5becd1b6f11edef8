"""Does torch.compile speed up a SEAL tuning step? Side by side in one process: the eager step against the same
step through torch.compile (inductor), with and without activation checkpointing, on one `lines` sample.

For each mode it prints what dynamo captured (graphs, graph breaks and their first reasons, from
torch._dynamo.explain), the compile time (first compiled step minus an eager one), the best step time of
each, their ratio, and the cosine between the two paths' gradients of the scales. Then a torch.profiler
table of one eager step: where the time goes, so the ratio can be read against it (inductor fuses
elementwise ops; matmuls and SDPA run the same kernels either way).

    .venv/bin/python tools/bench_compile.py [--model smollm2] [--length 1024] [--repeat 3] [--dtype fp32]
                                            [--profile-only] [--rows 12]

--profile-only skips the compile comparison and prints the profile of one eager step (after a warm-up).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--profile-only", action="store_true", help="no compile comparison, only the eager profile")
    ap.add_argument("--rows", type=int, default=12, help="ops in the profile table")
    args = ap.parse_args()

    import torch
    from transformers.utils import logging

    from sealgguf.models import resolve
    from sealgguf.tune.data import make_examples
    from sealgguf.tune.model import SealScales, disable_checkpointing, enable_checkpointing, load
    from sealgguf.tune.trainer import answer_losses

    logging.disable_progress_bar()
    lm = load(resolve(args.model), "cpu", dtype=args.dtype)
    ex = make_examples(["lines"], 1, args.length, lm.encoder, "train")[0]
    ids = ex.ids[None]
    seal = SealScales(lm.layout, "channel").attach(lm.model)
    lm.model.train()

    def step(fn) -> torch.Tensor:
        loss, _ = answer_losses(fn, ids, ex.n_answer)
        loss.sum().backward()
        g = seal.scales.grad.detach().clone()
        seal.scales.grad = None
        return g

    def best(fn) -> float:
        ts = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            step(fn)
            ts.append(time.perf_counter() - t0)
        return min(ts)

    print(f"{args.model}, {int(ids.numel())} tokens, {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| checkpointing | graphs | graph breaks | compile s | eager s/step | compiled s/step | speed-up | "
          "grad cosine |")
    print("|---|---|---|---|---|---|---|---|")
    reasons: dict[bool, Counter] = {}
    for ckpt in () if args.profile_only else (False, True):
        (enable_checkpointing if ckpt else disable_checkpointing)(lm.model)
        lm.model.train()
        torch._dynamo.reset()
        ex_info = torch._dynamo.explain(lambda i: answer_losses(lm.model, i, ex.n_answer))(ids)
        reasons[ckpt] = Counter(str(b.reason).splitlines()[0][:140] for b in ex_info.break_reasons)
        step(lm.model)  # warm-up
        eager = best(lm.model)
        torch._dynamo.reset()
        compiled = torch.compile(lm.model)
        t0 = time.perf_counter()
        g_compiled = step(compiled)
        compile_s = time.perf_counter() - t0 - eager
        fast = best(compiled)
        g_eager = step(lm.model)
        cos = float(torch.nn.functional.cosine_similarity(g_eager.flatten(), g_compiled.flatten(), dim=0))
        print(f"| {'on' if ckpt else 'off'} | {ex_info.graph_count} | {ex_info.graph_break_count} | {compile_s:.0f} | "
              f"{eager:.2f} | {fast:.2f} | {eager / fast:.2f}x | {cos:.5f} |", flush=True)
    for ckpt, c in reasons.items():
        for r, n in c.most_common(5):
            print(f"graph break (checkpointing {'on' if ckpt else 'off'}), {n}x: {r}")

    disable_checkpointing(lm.model)
    lm.model.train()
    from torch.profiler import ProfilerActivity, profile

    step(lm.model)  # warm-up (oneDNN builds its kernels on first use)
    t0 = time.perf_counter()
    step(lm.model)
    print(f"\neager step without checkpointing: {time.perf_counter() - t0:.2f} s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(lm.model)
    print("\nOne eager step without checkpointing, by op (self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
