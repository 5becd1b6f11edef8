"""Benchmark the fold engine.

1. Per block type: C++ fold throughput (requantizing every block: per-channel scales, with and without
   the refit candidate; and the exact per-head path) vs gguf-py's numpy path (dequantize, scale,
   quantize) where gguf-py can quantize; and the quantizer alone, the engine's against ggml's reference.
2. Per-head scales on K-quant layouts where a 256-value super-block spans several heads (head_dim 64
   or 128, as in Llama-3, Qwen, Mistral): Gemma 3's real K-quant attn_output weights treated as such
   heads, with per-head scales drawn from a learned SEAL-H file (--head-scales; uniform 0.5-1.5 without
   one). Relative RMSE against the exactly scaled weights: a fresh quantization of every block, and the
   engine (the better of that and the block's own levels with refit scales, per block), and the engine's
   error with each sub-block's min left unrounded (what the integer mins cost).
   --parts bound: how far any fit that keeps the 4-bit codes could go on the same super-blocks (a sample):
   every fp16 step d and min step dmin within --span of the least-squares ones, each sub-block's integer
   scale and min the best of a 5 x 5 neighbourhood, against the engine and a fresh quantization.
3. Whole file: `fold_file` vs a plain copy of the same file and vs the SHA-256 of it (the fold records the
   source's hash, so max(copy, SHA-256) is its floor), side by side in one run, and the peak memory of a
   fold in a child process.

    .venv/bin/python tools/bench_fold.py [--model smollm2|gemma3|PATH] [--rows 1024] [--repeat 3] [--parts file]
        [--head-scales runs/reproduce/tune/gemma3-lines1024-H-lr0.02-s50.scales.safetensors]
    .venv/bin/python tools/bench_fold.py --parts bound [--samples 300] [--span 1.3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_HEAD_SCALES = Path("runs/reproduce/tune/gemma3-lines1024-H-lr0.02-s50.scales.safetensors")
MIN_SUB_BLOCK = {"Q2_K": 16, "Q4_K": 32, "Q5_K": 32}  # the K-quants with per-sub-block mins
TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12,
         "Q5_K": 13, "Q6_K": 14}


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_types(rows: int, cols: int, repeat: int) -> None:
    import gguf
    from gguf import quants

    from sealgguf import _core, ggml

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    per_channel = rng.uniform(0.5, 1.5, cols).astype(np.float32)
    per_head = np.repeat(rng.uniform(0.5, 1.5, cols // 256), 256).astype(np.float32)
    n = rows * cols
    print(f"fold of one {rows} x {cols} tensor ({os.cpu_count()} cores); Mvalues/s, best of {repeat}; 'fresh only' "
          "leaves out the refit candidate (every requantized block is ggml's reference quantization)")
    print(f"{'type':6s} {'C++ requant':>12s} {'fresh only':>11s} {'C++ 1 thread':>13s} {'C++ exact':>10s} "
          f"{'numpy':>9s} {'speed-up':>9s} {'quantize: C++':>14s} {'ggml':>7s}")
    for name, t in TYPES.items():
        raw = _core.quantize(x, t)
        req = best(lambda: _core.fold(raw, t, cols, per_channel), repeat)
        fresh = best(lambda: _core.fold(raw, t, cols, per_channel, refit=False), repeat)
        one = best(lambda: _core.fold(raw, t, cols, per_channel, 1), repeat)
        exact = best(lambda: _core.fold(raw, t, cols, per_head), repeat)
        qt = gguf.GGMLQuantizationType[name]

        def numpy_fold():
            deq = quants.dequantize(raw, qt)
            return quants.quantize(deq * per_channel, qt)

        try:
            np_t = best(numpy_fold, 1)
            np_s, ratio = f"{n / np_t / 1e6:9.2f}", f"{np_t / req:8.1f}x"
        except NotImplementedError:
            np_s, ratio = f"{'n/a':>9s}", f"{'-':>9s}"
        # the quantizer alone, one thread each: the engine's against ggml's reference (ggml_quantize_chunk without
        # an imatrix), on the same scaled values; both give the same bytes (tests/test_quants.py)
        scaled = _core.dequantize(raw, t, cols) * per_channel
        ours = best(lambda: _core.quantize(scaled, t), repeat)
        theirs = best(lambda: ggml.quantize(scaled, t), repeat)
        print(f"{name:6s} {n / req / 1e6:12.2f} {n / fresh / 1e6:11.2f} {n / one / 1e6:13.2f} {n / exact / 1e6:10.2f} "
              f"{np_s} {ratio} {n / ours / 1e6:14.1f} {n / theirs / 1e6:7.1f}")


def kquant_heads(src, pool: np.ndarray | None, rng: np.random.Generator, head_dims: tuple[int, ...]):
    """The K-quant attn_output tensors of `src` treated as heads of each of `head_dims` values, with one scale per
    head drawn from `pool` (uniform 0.5-1.5 without one), in tensor order and, per tensor, head_dims order.
    Yields (tensor, type name, head_dim, raw bytes, dequantized values, column scales)."""
    from sealgguf import _core
    from sealgguf.gguf_file import ATTN_OUTPUT

    for t in src.tensors:
        name = src.type_name(t)
        if not ATTN_OUTPUT.match(t.name) or not name.endswith("_K"):
            continue
        n = int(t.shape[0])
        raw = src.tensor_data(t)
        original = _core.dequantize(raw, t.type_id, n)
        for hd in head_dims:
            per_head = pool[rng.integers(0, pool.size, n // hd)] if pool is not None else rng.uniform(0.5, 1.5, n // hd)
            yield t, name, hd, raw, original, np.repeat(per_head, hd).astype(np.float32)


def bench_kquant_heads(model: Path, head_scales: Path | None) -> None:
    from sealgguf import _core, scales
    from sealgguf.fold import open_gguf

    src = open_gguf(model)
    pool = scales.load(head_scales).values.reshape(-1) if head_scales else None
    print(f"per-head folds on K-quant layouts: {model.name}'s attn_output as heads of 64 / 128 values; scales "
          + (f"drawn from {head_scales.name}" if pool is not None else "uniform 0.5-1.5"))
    print(f"{'type':6s} {'head_dim':>8s} {'tensors':>7s} {'fresh':>8s} {'engine':>8s} {'ratio':>6s} "
          f"{'refit blocks':>13s} {'mins unrounded':>15s}")
    rows = {}
    for t, name, hd, raw, original, s in kquant_heads(src, pool, np.random.default_rng(0), (64, 128)):
        n = original.shape[1]
        target = original * s
        fresh = _core.dequantize(_core.quantize(target, t.type_id), t.type_id, n)
        new, st = _core.fold(raw, t.type_id, n, s)
        # what is left if each sub-block's min were free (its mean residual removed): the rounding of the
        # 6-bit (Q2_K: 4-bit) mins, measured
        resid = (_core.dequantize(new, t.type_id, n) - target).reshape(-1, MIN_SUB_BLOCK.get(name, 1))
        r = rows.setdefault((name, hd), [0, 0.0, 0.0, 0.0, 0, 0, 0.0])
        r[6] += float(np.square(resid - resid.mean(-1, keepdims=True), dtype=np.float64).sum())
        ref = float(np.square(target, dtype=np.float64).sum())
        r[0] += 1
        r[1] += float(np.square(fresh - target, dtype=np.float64).sum())
        r[2] += st["rel_rmse"] ** 2 * ref
        r[3] += ref
        r[4] += st["blocks_refit"]
        r[5] += st["blocks_requantized"]
    for (name, hd), (k, e_fresh, e_engine, ref, refit, req, e_free) in sorted(rows.items()):
        f, e = np.sqrt(e_fresh / ref), np.sqrt(e_engine / ref)
        free = f"{np.sqrt(e_free / ref):15.2e}" if name in MIN_SUB_BLOCK else f"{'-':>15s}"
        print(f"{name:6s} {hd:8d} {k:7d} {f:8.2e} {e:8.2e} {f / e:5.2f}x {refit:6d}/{req:<6d} {free}")


def _fp16_between(lo: float, hi: float) -> np.ndarray:
    """Every fp16 value in [lo, hi] (lo > 0), as float64."""
    bits = np.arange(np.float16(lo).view(np.uint16), np.float16(hi).view(np.uint16) + 1, dtype=np.uint16)
    return bits.view(np.float16).astype(np.float64)


def best_kept_codes(target: np.ndarray, codes: np.ndarray, span: float, top: int = 63) -> float:
    """The lowest squared error of one K-quant super-block (value = d sc q - dmin m, sub-blocks as the rows of
    target [n_sub, sub] and codes q) that keeps the codes: every fp16 d and dmin from the largest least-squares
    sub-block slope and offset over `top` up to `span` times that, each sub-block's integers (sc, m) in
    [0, top] the best of the 5 x 5 around the rounded least-squares pair."""
    t, q = target.astype(np.float64), codes.astype(np.float64)
    n = q.shape[1]
    sl, sll, st, slt, stt = q.sum(1), (q * q).sum(1), t.sum(1), (q * t).sum(1), (t * t).sum(1)
    var = n * sll - sl * sl
    slope = np.where(var > 0, (n * slt - sl * st) / np.where(var > 0, var, 1), 0.0)  # t ~ slope q - offset
    offset = (slope * sl - st) / n
    a_top, b_top = max(slope.max(), 1e-8) / top, max(offset.max(), 1e-8) / top
    d, dmin = np.meshgrid(_fp16_between(a_top, a_top * span), _fp16_between(b_top, b_top * span), indexing="ij")
    total = np.zeros(d.shape)
    for j in range(q.shape[0]):
        sc0, m0 = np.rint(slope[j] / d), np.rint(offset[j] / dmin)
        best = np.full(d.shape, np.inf)
        for ds in range(-2, 3):
            x = d * np.clip(sc0 + ds, 0, top)
            for dm in range(-2, 3):
                y = dmin * np.clip(m0 + dm, 0, top)
                e = x * x * sll[j] + n * y * y + stt[j] - 2 * x * slt[j] + 2 * y * st[j] - 2 * x * y * sl[j]
                best = np.minimum(best, e)
        total += best
    return float(total.min())


def bench_kquant_bound(model: Path, head_scales: Path | None, samples: int, span: float) -> None:
    from sealgguf import _core, scales
    from sealgguf.fold import open_gguf
    from sealgguf.fold.weighted import code_grid

    src = open_gguf(model)
    pool = scales.load(head_scales).values.reshape(-1) if head_scales else None
    print(f"keeping the codes at best: {model.name}'s Q4_K attn_output as heads of 64 / 128, {samples} sampled "
          f"super-blocks, every fp16 d and dmin within {span}x of the least-squares ones")
    print(f"{'head_dim':>8s} {'fresh':>9s} {'engine':>9s} {'ratio':>6s} {'best kept':>10s} {'ratio':>6s}")
    for hd in (64, 128):
        rng = np.random.default_rng(0)
        parts = {"target": [], "codes": [], "fresh": [], "engine": []}
        for t, name, _, raw, original, s in kquant_heads(src, pool, rng, (hd,)):
            if name != "Q4_K":
                continue
            n = original.shape[1]
            a, b = code_grid(raw.reshape(original.shape[0], -1), t.type_id, n)
            parts["codes"].append(np.rint((original - b) / np.where(a == 0, 1, a)))
            parts["target"].append(original * s)
            parts["fresh"].append(_core.dequantize(_core.quantize(original * s, t.type_id), t.type_id, n))
            parts["engine"].append(_core.dequantize(_core.fold(raw, t.type_id, n, s)[0], t.type_id, n))
        blocks = {k: np.concatenate([x.reshape(-1, 256) for x in v]).astype(np.float64) for k, v in parts.items()}
        pick = rng.choice(len(blocks["target"]), samples, replace=False)
        target = blocks["target"][pick]
        ref = float(np.square(target).sum())
        fresh = np.sqrt(np.square(blocks["fresh"][pick] - target).sum() / ref)
        engine = np.sqrt(np.square(blocks["engine"][pick] - target).sum() / ref)
        kept = np.sqrt(sum(best_kept_codes(target[i].reshape(8, 32), blocks["codes"][pick[i]].reshape(8, 32), span)
                           for i in range(samples)) / ref)
        print(f"{hd:8d} {fresh:9.3e} {engine:9.3e} {fresh / engine:5.2f}x {kept:10.3e} {fresh / kept:5.2f}x")


def bench_file(model: Path, repeat: int) -> None:
    from sealgguf import scales
    from sealgguf.fold import fold_file, open_gguf, read_layout
    from sealgguf.fsutil import sha256_file

    layout = read_layout(open_gguf(model), model)
    size = model.stat().st_size
    with tempfile.TemporaryDirectory(dir=Path(model).parent if os.access(model.parent, os.W_OK) else None) as d:
        d = Path(d)
        rng = np.random.default_rng(0)
        for gran, shape in (("head", (layout.n_layer, layout.n_head)),
                            ("channel", (layout.n_layer, layout.n_head, layout.head_dim))):
            sp = d / f"{gran}.safetensors"
            scales.save(sp, rng.uniform(0.5, 1.5, shape).astype(np.float32), {})
            copy_t, sha_t, fold_t, bare_t = [], [], [], []
            for _ in range(repeat):  # interleaved, so all four see the same page cache and machine load
                t0 = time.perf_counter()
                shutil.copyfile(model, d / "copy.gguf")
                copy_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                sha256_file(model)
                sha_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                fold_file(model, sp, d / "sealed.gguf")
                fold_t.append(time.perf_counter() - t0)
                with _without_safety_checks():
                    t0 = time.perf_counter()
                    fold_file(model, sp, d / "bare.gguf")
                    bare_t.append(time.perf_counter() - t0)
                for name in ("copy.gguf", "sealed.gguf", "bare.gguf"):
                    os.unlink(d / name)
            c, h = statistics.median(copy_t), statistics.median(sha_t)
            f, b = statistics.median(fold_t), statistics.median(bare_t)
            child = subprocess.run([sys.executable, "-c", (
                "import resource,sys;from sealgguf.fold import fold_file;"
                f"fold_file({str(model)!r},{str(sp)!r},{str(d / 'm.gguf')!r});"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")],
                capture_output=True, text=True, check=True)
            rss_mb = int(child.stdout.strip()) / 1024
            print(f"{model.name} ({size / 2**20:.0f} MiB), {gran} scales: copy {c:.3f} s, SHA-256 {h:.3f} s, "
                  f"fold {f:.3f} s -> {f / max(c, h):.2f}x max(copy, SHA-256), {f / c:.2f}x copy (median of {repeat}); "
                  f"without the safety checks {b:.3f} s ({f / b:.2f}x); peak RSS of a fold process {rss_mb:.0f} MiB")


@contextlib.contextmanager
def _without_safety_checks():
    """fold_file minus its output checks (per-head overflow/underflow, read-back of the written file),
    to measure what they cost."""
    from sealgguf.fold import rewrite

    saved = rewrite.check_folded, rewrite.verify_written
    rewrite.check_folded = lambda *a, **k: None
    rewrite.verify_written = lambda *a, **k: None
    try:
        yield
    finally:
        rewrite.check_folded, rewrite.verify_written = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="GGUF file or bundled name (repeatable)")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--head-scales", type=Path, default=DEFAULT_HEAD_SCALES if DEFAULT_HEAD_SCALES.is_file() else None,
                    help="SEAL-H scales file to draw per-head scales from (default: Gemma's from tools/reproduce.py)")
    ap.add_argument("--parts", default="types,heads,file", help="which of the three tables (default: all); "
                    "'bound' adds the best fit that keeps the codes (slow: ~0.3 s a super-block)")
    ap.add_argument("--samples", type=int, default=300, help="super-blocks for --parts bound")
    ap.add_argument("--span", type=float, default=1.3, help="search range of d and dmin for --parts bound")
    args = ap.parse_args()
    from sealgguf.models import resolve

    parts = args.parts.split(",")
    if "types" in parts:
        bench_types(args.rows, args.cols, args.repeat)
        print()
    if "heads" in parts:
        bench_kquant_heads(resolve("gemma3"), args.head_scales)
        print()
    if "bound" in parts:
        bench_kquant_bound(resolve("gemma3"), args.head_scales, args.samples, args.span)
        print()
    if "file" in parts:
        for m in args.model or ["smollm2", "gemma3"]:
            bench_file(resolve(m), args.repeat)


if __name__ == "__main__":
    main()
