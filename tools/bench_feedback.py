"""How much the fold's requantization moves attn_output's output, on held-out essay text.

For each requantized attn_output tensor the fold can take: the engine alone (fresh quantization or refit
levels), the engine against ggml's importance-weighted quantizer (an imatrix: its diagonal), and that with
each block's error carried into the blocks after it (the imatrix's Gram matrices; sealgguf.fold.weighted).
The imatrix is collected as `sealgguf imatrix` does (the start of the essay corpus), for each --windows;
the error is measured on activations from the knowledge check's text (the end of the corpus):
sum over layers of |(W_sealed - W_exact) x|^2 / |W_exact x|^2, where W_exact is the tensor with the scales
applied exactly. The square root is printed: a relative output error.

    .venv/bin/python tools/bench_feedback.py [--model smollm2] [--scales FILE|none] [--windows 16,64]
        [--head-dims 64,128 --head-scales FILE]   (per-head scales on K-quant layouts, as bench_fold's second table)
    .venv/bin/python tools/bench_feedback.py --size 4096,8192 [--types Q4_1,Q4_K]
        (only the time of the error feedback on one synthetic N x N attn_output, the size of Llama-3-8B's and
        -70B's, with per-channel scales and a Gram matrix of 2N random activations; no model is loaded)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DEFAULT_SCALES = "runs/reproduce/tune/smollm2-lines1024-C-lr0.02-keep10-s50.scales.safetensors"


def knowledge_windows(encoder, windows: int, window: int) -> list:
    """`windows` x `window` tokens of the knowledge check's text (the end of the corpus), each led by BOS."""
    import torch

    from sealgguf.eval.knowledge import knowledge_text

    bos = [encoder.bos_id] if encoder.bos_id is not None else []
    ids = encoder.encode(knowledge_text())
    width = window - len(bos)
    return [torch.tensor(bos + ids[w * width:(w + 1) * width]) for w in range(windows)]


def fold_errors(src, tensors, cols_of, test, calib) -> tuple[dict[str, float], dict[str, float]]:
    """Squared output error on the held-out Gram matrices per fold (relative to the exact layer's output), and
    seconds, summed over `tensors`; cols_of(t) gives the column scales of tensor t."""
    from sealgguf import _core
    from sealgguf.fold.rewrite import REQUANTIZED
    from sealgguf.fold.weighted import feedback_candidate, weighted_candidate

    err: dict[str, float] = {}
    secs: dict[str, float] = {}
    ref = 0.0
    for t in tensors:
        n = int(t.shape[0])
        cols = cols_of(t)
        raw = src.tensor_data(t)
        want = _core.dequantize(raw, t.type_id, n) * cols[None, :]
        h = test[t.name]
        ref += float(np.einsum("ij,jk,ik->", want, h, want))
        start = time.perf_counter()
        runs = {"fresh quantization (ggml reference)": (_core.quantize(want, t.type_id), time.perf_counter() - start)}
        start = time.perf_counter()
        engine, stats = _core.fold(raw, t.type_id, n, cols, 0, None)
        runs["engine (fresh or refit per block)"] = (engine, time.perf_counter() - start)
        for w, (importance, _, grams) in calib.items():
            start = time.perf_counter()
            runs[f"imatrix, {w} windows"] = (weighted_candidate(engine, want, t.type_id, importance[t.name])[0],
                                             time.perf_counter() - start)
            start = time.perf_counter()
            runs[f"imatrix + error feedback, {w} windows"] = (
                feedback_candidate(engine, want, t.type_id, importance[t.name], grams[t.name],
                                   stats["block_kinds"] >= REQUANTIZED)[0],
                time.perf_counter() - start)
        for name, (out, s) in runs.items():
            e = (_core.dequantize(out.reshape(-1), t.type_id, n) - want).astype(np.float64)
            err[name] = err.get(name, 0.0) + float(np.einsum("ij,jk,ik->", e, h, e))
            secs[name] = secs.get(name, 0.0) + s
    return {k: v / ref for k, v in err.items()}, secs


def table(err: dict[str, float], secs: dict[str, float]) -> None:
    base = err["fresh quantization (ggml reference)"]
    print("| fold | relative output error | squared, against a fresh quantization's | s (all tensors) |")
    print("|---|---|---|---|")
    for name in err:
        print(f"| {name} | {np.sqrt(err[name]):.4f} | {err[name] / base:.2f} | {secs[name]:.2f} |")


def time_at_size(size: int, type_name: str) -> None:
    """Seconds of the engine's fold and of the error feedback on one synthetic size x size tensor."""
    import gguf

    from sealgguf import _core
    from sealgguf.fold.rewrite import REQUANTIZED
    from sealgguf.fold.weighted import feedback_candidate

    type_id = int(gguf.GGMLQuantizationType[type_name])
    rng = np.random.default_rng(0)
    raw = _core.quantize((rng.standard_normal((size, size)) * 0.02).astype(np.float32), type_id)
    cols = rng.uniform(0.7, 1.3, size).astype(np.float32)
    x = rng.standard_normal((2 * size, size)).astype(np.float32) * rng.uniform(0.2, 3, size).astype(np.float32)
    gram = (x.T @ x).astype(np.float64)
    want = _core.dequantize(raw, type_id, size) * cols
    start = time.perf_counter()
    engine, stats = _core.fold(raw, type_id, size, cols, 0, None)
    mid = time.perf_counter()
    feedback_candidate(engine, want, type_id, np.diag(gram).astype(np.float32), gram,
                       stats["block_kinds"] >= REQUANTIZED)
    end = time.perf_counter()
    print(f"| {size} x {size} | {type_name} | {mid - start:.2f} | {end - mid:.1f} |")


def main() -> None:
    from sealgguf.gguf_file import ATTN_OUTPUT, GGUFFile, read_layout
    from sealgguf.imatrix import WINDOW, measure
    from sealgguf.models import resolve
    from sealgguf.scales import load as load_scales
    from sealgguf.tune.data import anchor_windows
    from sealgguf.tune.model import load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--scales", default=DEFAULT_SCALES, help="scales file to fold ('none': skip this table)")
    ap.add_argument("--windows", default="16,64", help="imatrix sizes to compare (256-token windows)")
    ap.add_argument("--head-dims", default="", help="also fold per-head scales on K-quant tensors treated as heads "
                    "of these sizes (e.g. 64,128 on gemma3), drawn from --head-scales as tools/bench_fold.py does")
    ap.add_argument("--head-scales", default=None, help="a learned per-head scales file to draw from "
                    "(uniform 0.5-1.5 without one)")
    ap.add_argument("--size", default="", help="only time the error feedback on synthetic square tensors of these "
                    "sizes (e.g. 4096,8192)")
    ap.add_argument("--types", default="Q4_1,Q4_K", help="the types for --size")
    args = ap.parse_args()
    if args.size:
        print("| tensor | type | engine fold, s | error feedback, s |")
        print("|---|---|---|---|")
        for size in [int(n) for n in args.size.split(",")]:
            for name in args.types.split(","):
                time_at_size(size, name)
        return
    model = resolve(args.model)
    src = GGUFFile(model)
    layout = read_layout(src, model)
    lm = load(model, "cpu")  # one load: the held-out text and each imatrix, as `sealgguf imatrix` collects it
    test = measure(lm.model, knowledge_windows(lm.encoder, 8, 512), gram=True)[2]
    calib = {int(w): measure(lm.model, anchor_windows(lm.encoder, int(w), WINDOW), gram=True)
             for w in args.windows.split(",")}
    del lm
    tensors = [t for t in src.tensors if ATTN_OUTPUT.match(t.name)]
    print(f"{model.name}: {len(tensors)} attn_output tensors, held-out text 8 x 512 tokens")
    if args.scales != "none":
        scales = load_scales(args.scales)
        scales.check_layout(layout, args.scales)
        print(f"\n{Path(args.scales).name}")
        table(*fold_errors(src, tensors, lambda t: scales.column_scales(int(t.name.split(".")[1]), layout.head_dim),
                       test, calib))
    pool = load_scales(args.head_scales).values.reshape(-1) if args.head_scales else None
    for hd in [int(d) for d in args.head_dims.split(",") if d]:
        rng = np.random.default_rng(0)

        def per_head(t, hd=hd, rng=rng):
            n = int(t.shape[0])
            heads = pool[rng.integers(0, pool.size, n // hd)] if pool is not None else rng.uniform(0.5, 1.5, n // hd)
            return np.repeat(heads, hd).astype(np.float32)

        kquant = [t for t in tensors if src.type_name(t).endswith("_K")]
        print(f"\nper-head scales on {len(kquant)} K-quant tensors as heads of {hd}, drawn from "
              + (Path(args.head_scales).name if pool is not None else "uniform 0.5-1.5"))
        table(*fold_errors(src, kquant, per_head, test, calib))


if __name__ == "__main__":
    main()
