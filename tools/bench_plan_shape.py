"""The memory and time plan against a measured tuning step, for a model shape that has no file here: the
model is built from its transformers config with random weights, straight on the device, in bf16.

Its purpose is the plan's claim for big models (issue 13): an 8B model at 32K tokens on one 80 GB GPU, with
bf16 weights, activation checkpointing per layer, SDPA attention and logits for the answer tokens only.
Weights do not change a step's time or memory, so random ones measure what the real model would.

    python tools/bench_plan_shape.py [--shape llama-3.1-8b | --config config.json] [--device cuda]
                                     [--lengths 8192,32768] [--ckpt on,off] [--repeat 2]

For each length and checkpointing mode: the plan's peak (weights + the step) and time per step, then the
measured ones: CUDA's max_memory_allocated over the step, and the best of `repeat` timed steps after a
warm-up (forward + backward to SEAL-C scales, as the tuner runs it). A mode the plan says cannot fit the
device is skipped, with the plan printed.
"""

from __future__ import annotations

import argparse
import json
import time

# Llama 3.1 8B (meta-llama/Llama-3.1-8B config.json: the fields that shape memory and time)
SHAPES = {
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=False,
                         rms_norm_eps=1e-5),
}


def main() -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sealgguf.tune.data import Example
    from sealgguf.tune.model import SealScales, enable_checkpointing, disable_checkpointing, head_layout
    from sealgguf.tune.plan import GIB, make_plan, shape_from_config
    from sealgguf.tune.trainer import answer_loss

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    ap.add_argument("--config", help="a transformers config.json instead of --shape")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--lengths", default="8192,32768")
    ap.add_argument("--ckpt", default="on,off", help="checkpointing modes to run: on, off or both")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    if args.config:
        fields = json.load(open(args.config))
    else:
        fields = dict(SHAPES[args.shape])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    config.use_cache = False
    shape = shape_from_config(config)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    cuda = args.device.startswith("cuda")
    plans = {}
    for length in (int(x) for x in args.lengths.split(",")):
        for mode in args.ckpt.split(","):
            plans[length, mode] = make_plan(shape, length, args.dtype, args.device, mode == "on", keep=False)
    t0 = time.perf_counter()
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=dt, attn_implementation="sdpa")
    model.requires_grad_(False)
    if cuda:
        torch.cuda.synchronize()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"{args.config or args.shape}: {shape.n_params / 1e9:.2f} B parameters by the plan's count, "
          f"{weights / GIB:.2f} GiB of {args.dtype} weights built on {args.device} in {time.perf_counter() - t0:.1f} s")
    seal = SealScales(head_layout(config), "channel").to(args.device).attach(model)
    print(f"{'tokens':>6s} {'ckpt':>4s} {'plan peak GiB':>14s} {'measured':>9s} {'plan/meas':>9s} "
          f"{'plan s/step':>11s} {'measured':>9s} {'tok/s':>7s}  plan detail")
    for (length, mode), plan in plans.items():
        detail = ", ".join(f"{k} {v / GIB:.2f}" for k, v in plan.parts.items())
        if plan.available is not None and plan.peak > plan.available:  # free memory before the model was built
            print(f"{length:6d} {mode:>4s} {plan.peak / GIB:14.3g} {'-':>9s} {'(does not fit: skipped)':>30s}  {detail}")
            continue
        (enable_checkpointing if mode == "on" else disable_checkpointing)(model)
        model.train()
        ex = Example(torch.randint(0, shape.vocab, (length,)), 4, None)

        def step():
            loss, _ = answer_loss(model, ex, args.device)
            loss.backward()
            seal.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()

        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        step()  # warm-up
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() if cuda else float("nan")
        best = min(times)
        print(f"{length:6d} {mode:>4s} {plan.peak / GIB:14.3g} {peak / GIB:9.3g} {plan.peak / peak:9.2f} "
              f"{plan.seconds_per_step:11.3g} {best:9.3g} {length / best:7.0f}  {detail}", flush=True)


if __name__ == "__main__":
    main()
