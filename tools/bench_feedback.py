"""How much the fold's requantization moves attn_output's output, on held-out essay text.

For each requantized attn_output tensor the fold can take: the engine alone (fresh quantization or refit
levels), the engine against ggml's importance-weighted quantizer (an imatrix: its diagonal), and that with
each block's error carried into the blocks after it (the imatrix's Gram matrices; sealgguf.fold.weighted).
The imatrix is collected as `sealgguf imatrix` does (the start of the essay corpus), for each --windows;
the error is measured on activations from the knowledge check's text (the end of the corpus):
sum over layers of |(W_sealed - W_exact) x|^2 / |W_exact x|^2, where W_exact is the tensor with the scales
applied exactly. The square root is printed: a relative output error.

    .venv/bin/python tools/bench_feedback.py [--model smollm2] [--scales FILE] [--windows 16,64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DEFAULT_SCALES = "runs/reproduce/tune/smollm2-lines1024-C-lr0.02-keep10-s50.scales.safetensors"


def held_out_grams(model: Path, windows: int, window: int) -> dict[str, np.ndarray]:
    """Mean x x^T of attn_output's input over `windows` x `window` tokens of the knowledge check's text."""
    import torch

    from sealgguf.eval.knowledge import knowledge_text
    from sealgguf.tune.model import decoder_layers, load

    lm = load(model, "cpu")
    layers = decoder_layers(lm.model)
    grams = [torch.zeros(l.self_attn.o_proj.in_features, l.self_attn.o_proj.in_features, dtype=torch.float64)
             for l in layers]

    def hook(i):
        def pre(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            grams[i].addmm_(x.T, x)
        return pre

    handles = [l.self_attn.o_proj.register_forward_pre_hook(hook(i)) for i, l in enumerate(layers)]
    bos = [lm.encoder.bos_id] if lm.encoder.bos_id is not None else []
    ids = lm.encoder.encode(knowledge_text())
    width = window - len(bos)
    with torch.no_grad():
        for w in range(windows):
            lm.model(input_ids=torch.tensor([bos + ids[w * width:(w + 1) * width]]), use_cache=False)
    for h in handles:
        h.remove()
    return {f"blk.{i}.attn_output.weight": g.numpy() for i, g in enumerate(grams)}


def main() -> None:
    from sealgguf import _core
    from sealgguf.fold.rewrite import plan_tensor, scaled_target
    from sealgguf.fold.weighted import feedback_candidate, weighted_candidate
    from sealgguf.gguf_file import ATTN_OUTPUT, GGUFFile, read_layout
    from sealgguf.imatrix import collect
    from sealgguf.models import resolve
    from sealgguf.scales import load as load_scales

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--scales", default=DEFAULT_SCALES)
    ap.add_argument("--windows", default="16,64", help="imatrix sizes to compare (256-token windows)")
    args = ap.parse_args()
    model = resolve(args.model)
    src = GGUFFile(model)
    layout = read_layout(src, model)
    scales = load_scales(args.scales)
    scales.check_layout(layout, args.scales)
    test = held_out_grams(model, 8, 512)
    sizes = [int(w) for w in args.windows.split(",")]
    calib = {w: collect(model, w, gram=True) for w in sizes}

    tensors = [t for t in src.tensors if ATTN_OUTPUT.match(t.name)]
    err: dict[str, float] = {}
    secs: dict[str, float] = {}
    ref = 0.0
    for t in tensors:
        n = int(t.shape[0])
        plan = plan_tensor(t, scales, layout)
        want = scaled_target(src, t, plan, n)
        h = test[t.name]
        ref += float(np.einsum("ij,jk,ik->", want, h, want))
        start = time.perf_counter()
        engine, _ = _core.fold(src.tensor_data(t), t.type_id, n, plan.cols, 0, plan.rows)
        runs = {"engine": (engine, time.perf_counter() - start)}
        for w in sizes:
            importance, _, grams = calib[w]
            start = time.perf_counter()
            runs[f"imatrix, {w} windows"] = (weighted_candidate(engine, want, t.type_id, importance[t.name])[0],
                                             time.perf_counter() - start)
            start = time.perf_counter()
            runs[f"imatrix + error feedback, {w} windows"] = (
                feedback_candidate(engine, want, t.type_id, importance[t.name], grams[t.name])[0],
                time.perf_counter() - start)
        for name, (raw, s) in runs.items():
            e = (_core.dequantize(raw.reshape(-1), t.type_id, n) - want).astype(np.float64)
            err[name] = err.get(name, 0.0) + float(np.einsum("ij,jk,ik->", e, h, e))
            secs[name] = secs.get(name, 0.0) + s
    print(f"{model.name}, {Path(args.scales).name}: {len(tensors)} attn_output tensors, held-out text 8 x 512 tokens")
    print("| fold | relative output error | squared, against the engine's | s (all tensors) |")
    print("|---|---|---|---|")
    for name in err:
        print(f"| {name} | {np.sqrt(err[name] / ref):.4f} | {err[name] / err['engine']:.2f} | {secs[name]:.2f} |")


if __name__ == "__main__":
    main()
