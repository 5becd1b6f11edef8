"""The `sealgguf` command line: sealgguf VERB IN [OUT] [--options]."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sealgguf import __version__
from sealgguf.errors import SealError
from sealgguf.tune import DEFAULT_GRANULARITY, DEFAULT_KEEP, DEFAULT_LR

EPILOG = """\
typical use:
  sealgguf demo                                   # the whole pipeline on the bundled SmolLM2 (~15 min CPU)
  sealgguf seal smollm2 -o sealed.gguf --task lines --length 1024
  sealgguf tune smollm2 -o scales.safetensors --task lines --granularity head --length 2048
  sealgguf fold model.gguf scales.safetensors -o sealed.gguf
  sealgguf eval model.gguf --compare sealed.gguf --task lines,passkey --lengths 1024,2048 --samples 50
  sealgguf inspect sealed.gguf

MODEL is a GGUF file, a Hugging Face folder (tune only), or a bundled name: smollm2, gemma3.
"""


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _add_tune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tuning (defaults measured on the bundled SmolLM2: README, Results)")
    g.add_argument("--task", default="lines", help="task(s) to tune on, comma-separated: lines, passkey, niah, "
                   "kv, multikey; several mix round-robin (default: lines)")
    g.add_argument("--granularity", choices=("head", "channel"), default=DEFAULT_GRANULARITY,
                   help="channel: one scale per head channel (SEAL-C, the default); head: one per query head (SEAL-H)")
    g.add_argument("--length", type=int, default=1024, help="prompt length in the model's tokens (default 1024)")
    g.add_argument("--samples", type=int, default=50, help="synthetic training samples (default 50)")
    g.add_argument("--lr", type=float, default=None, help="AdamW learning rate, constant: the key knob (default "
                   f"{DEFAULT_LR['head']:g} head, {DEFAULT_LR['channel']:g} channel; the paper used 0.01 / 0.02 "
                   "without --keep)")
    g.add_argument("--epochs", type=int, default=1, help="passes over the samples (default 1)")
    g.add_argument("--keep", type=float, default=DEFAULT_KEEP, help="knowledge keeping: add KEEP x KL(baseline || "
                   f"sealed) on plain essay text to the loss; costs a 256-token forward+backward per step (default "
                   f"{DEFAULT_KEEP:g}; 0 is the paper's loss)")
    g.add_argument("--seed", type=int, default=0, help="seed for samples and order (default 0)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)")
    _add_rope_args(p)


def _add_rope_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("context extension")
    g.add_argument("--rope-scaling", choices=("none", "linear", "yarn", "ntk"), default="none",
                   help="rope scaling to run beyond the native window (default none)")
    g.add_argument("--rope-factor", type=float, default=0.0, help="context extension factor, e.g. 2")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sealgguf", formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description="Make quantized GGUF models better at long-context retrieval "
                                             "with SEAL attention-head scaling (ACL 2025).", epilog=EPILOG)
    ap.add_argument("--version", action="version", version=f"sealgguf {__version__}")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="verb", metavar="VERB")

    p = sub.add_parser("inspect", help="show a GGUF's attention layout, fold exactness and seal.* metadata")
    p.add_argument("model", help="GGUF file or bundled name")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("fold", help="fold a scales file into a quantized GGUF's attn_output weights",
                       description="Fold SEAL scales into blk.N.attn_output.weight, block by block, in each "
                                   "tensor's own quant type. Every other tensor and key is copied unchanged.")
    p.add_argument("model", help="input GGUF (never modified)")
    p.add_argument("scales", help="scales .safetensors written by `sealgguf tune`")
    p.add_argument("-o", "--output", required=True, help="output GGUF (written atomically)")
    p.add_argument("--threads", type=int, default=0, help="worker threads (default: all cores)")

    p = sub.add_parser("tune", help="learn SEAL scales on synthetic retrieval data (PyTorch)",
                       description="Learn one scale per attention head (or head channel) on generated samples "
                                   "with the model frozen, and write the scales file that `fold` reads.")
    p.add_argument("model", help="GGUF file (dequantized), Hugging Face folder, or bundled name")
    p.add_argument("-o", "--output", required=True, help="scales file to write (.safetensors)")
    _add_tune_args(p)
    p.add_argument("--val-samples", type=int, default=10, help="held-out samples for exact match (default 10)")
    p.add_argument("--grad-accum", type=int, default=1, help="samples per optimizer step (default 1)")
    p.add_argument("--no-checkpointing", action="store_true", help="keep activations (faster, more memory)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="save progress every N steps")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.ckpt.pt")

    p = sub.add_parser("eval", help="measure retrieval in llama.cpp, optionally against a second model",
                       description="Greedy decoding after each task's answer prefix, the same samples for "
                                   "every model; paired differences with 95% intervals.")
    p.add_argument("model", help="GGUF file or bundled name")
    p.add_argument("--compare", help="second GGUF scored on the same samples")
    p.add_argument("--task", default="lines", help="comma-separated tasks (default lines)")
    p.add_argument("--lengths", default="1024", help="comma-separated prompt lengths in tokens (default 1024)")
    p.add_argument("--samples", type=int, default=20, help="samples per cell (default 20)")
    p.add_argument("--depths", help="comma-separated needle depths in [0,1], e.g. 0,0.25,0.5,0.75,1")
    p.add_argument("--json", help="write every sample's output and the table here")
    p.add_argument("--plot", help="write accuracy plots (PNG) here")
    p.add_argument("--ppl-windows", type=int, default=0, help="knowledge check: perplexity and KL over N "
                   "windows of 512 essay tokens (default 0: skip)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-flash-attn", action="store_true")
    p.add_argument("--no-prefix-reuse", action="store_true", help="evaluate every prompt from scratch")
    p.add_argument("--seed", type=int, default=0)
    _add_rope_args(p)

    p = sub.add_parser("seal", help="tune, fold and evaluate in one go, with a before/after report",
                       description="Tune against the GGUF's own dequantized weights, fold into the same quant "
                                   "types, and compare baseline vs sealed in llama.cpp on held-out samples.")
    p.add_argument("model", help="GGUF file or bundled name")
    p.add_argument("-o", "--output", required=True, help="sealed GGUF; report files are written beside it")
    _add_tune_args(p)
    p.add_argument("--eval-samples", type=int, default=30, help="held-out samples per cell (default 30)")
    p.add_argument("--eval-lengths", help="comma-separated eval lengths (default: the tuning length)")
    p.add_argument("--eval-task", help="comma-separated eval tasks (default: the tuning tasks)")
    p.add_argument("--ppl-windows", type=int, default=4, help="knowledge check: perplexity and KL over N windows "
                   "of 512 essay tokens (default 4; 0 skips)")
    p.add_argument("--threads", type=int, default=None)

    p = sub.add_parser("demo", help="seal the bundled SmolLM2 on line retrieval (~15 min on 2 CPU cores)")
    p.add_argument("-o", "--output-dir", default="sealgguf-demo", help="folder for the sealed model and report")
    return ap


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_inspect(args) -> int:
    from sealgguf.fold import exact_per_head, open_gguf, read_layout
    from sealgguf.fold.gguf_file import field_value
    from sealgguf.models import resolve

    path = resolve(args.model)
    reader = open_gguf(path)
    layout = read_layout(reader, path)
    seal_meta = {k: field_value(reader, k) for k in reader.fields if k.startswith("seal.")}
    info = {"file": str(path), "architecture": layout.arch, "layers": layout.n_layer, "query_heads": layout.n_head,
            "kv_heads": layout.n_head_kv, "head_dim": layout.head_dim, "context_length": layout.context_length,
            "attn_output_types": layout.attn_output_types, "per_head_fold_exact": exact_per_head(layout),
            "seal": seal_meta}
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{path}")
    print(f"  architecture     {layout.arch}, {layout.n_layer} layers, context {layout.context_length}")
    print(f"  attention        {layout.n_head} query heads, {layout.n_head_kv} KV heads, head_dim {layout.head_dim}")
    types = ", ".join(f"{t} x{n}" for t, n in layout.attn_output_types.items())
    print(f"  attn_output      {types}")
    for t, exact in info["per_head_fold_exact"].items():
        how = "exact: only fp16 block scales change" if exact else "requantized: a head does not cover whole blocks"
        print(f"  per-head fold    {t}: {how}")
    print("  seal metadata    " + ("none" if not seal_meta else ""))
    for k, v in seal_meta.items():
        print(f"    {k} = {v}")
    return 0


def cmd_fold(args) -> int:
    from sealgguf.fold import fold_file
    from sealgguf.models import resolve

    res = fold_file(resolve(args.model), args.scales, args.output, threads=args.threads, progress=args.progress)
    errs = ", ".join(f"{t} {e:.2e}" for t, e in res.rel_rmse_by_type().items())
    print(f"wrote {res.out_path}: {len(res.tensors)} attn_output tensors folded ({res.granularity}); "
          f"blocks rescaled {res.blocks('blocks_rescaled')}, requantized {res.blocks('blocks_requantized')}, "
          f"unchanged {res.blocks('blocks_unchanged')}; relative RMSE {errs}")
    return 0


def cmd_tune(args) -> int:
    from sealgguf.tune import TuneOptions, run_tune

    info = run_tune(TuneOptions(
        model=args.model, out=Path(args.output), tasks=args.task.split(","), granularity=args.granularity,
        length=args.length, samples=args.samples, val_samples=args.val_samples, lr=args.lr, epochs=args.epochs,
        grad_accum=args.grad_accum, keep=args.keep, seed=args.seed, device=args.device,
        rope_scaling=args.rope_scaling,
        rope_factor=args.rope_factor, checkpointing=not args.no_checkpointing,
        checkpoint_every=args.checkpoint_every, resume=args.resume, progress=args.progress))
    print(f"wrote {args.output}: {args.granularity} scales "
          f"{info['scale_min']:.3f}..{info['scale_max']:.3f}; loss {info['loss_first']:.3f} -> "
          f"{info['loss_last10']:.3f} (last 10); validation exact match {info['val_exact_match_before']:.2f} -> "
          f"{info['val_exact_match_after']:.2f}; {info['seconds']} s on {info['device']}")
    return 0


def cmd_eval(args) -> int:
    from sealgguf import report as rep
    from sealgguf.eval.harness import EvalOptions, evaluate
    from sealgguf.eval.runner import RopeOptions
    from sealgguf.models import resolve
    from sealgguf.tasks import parse_tasks

    models = [resolve(args.model)] + ([resolve(args.compare)] if args.compare else [])
    report = evaluate(EvalOptions(
        models=models, tasks=parse_tasks(args.task), lengths=_ints(args.lengths), samples=args.samples,
        depths=_floats(args.depths) if args.depths else None,
        rope=RopeOptions(args.rope_scaling, args.rope_factor or 1.0), threads=args.threads,
        flash_attn=not args.no_flash_attn, reuse_prefix=not args.no_prefix_reuse, ppl_windows=args.ppl_windows,
        seed=args.seed, progress=args.progress))
    print(rep.table(report))
    if args.json:
        rep.write_json(report, args.json)
    if args.plot:
        rep.plot(report, args.plot)
    return 0


def cmd_seal(args) -> int:
    from sealgguf.pipeline import SealOptions, seal

    report = seal(SealOptions(
        model=args.model, out=Path(args.output), tasks=args.task.split(","), granularity=args.granularity,
        length=args.length, samples=args.samples, lr=args.lr, epochs=args.epochs, keep=args.keep,
        eval_samples=args.eval_samples,
        eval_lengths=_ints(args.eval_lengths) if args.eval_lengths else None,
        eval_tasks=args.eval_task.split(",") if args.eval_task else None, rope_scaling=args.rope_scaling,
        rope_factor=args.rope_factor, device=args.device, threads=args.threads, seed=args.seed,
        ppl_windows=args.ppl_windows, progress=args.progress))
    _print_seal(report)
    return 0


def _print_seal(report: dict) -> None:
    from sealgguf import report as rep

    print(report["header"] + rep.table(report))
    print("\nfiles: " + ", ".join(report["paths"].values()))


def cmd_demo(args) -> int:
    from sealgguf.pipeline import SealOptions, seal

    out = Path(args.output_dir) / "SmolLM2-135M-Instruct.sealed.Q4_1.gguf"
    # The shipped defaults (SEAL-C, lr 2e-2, --keep 10) on the task and length they were measured on (README,
    # Results), with 30 held-out samples to keep the demo short.
    report = seal(SealOptions(model="smollm2", out=out, tasks=["lines"], length=1024, samples=50, epochs=1,
                              eval_samples=30, progress=args.progress))
    _print_seal(report)
    return 0


COMMANDS = {"inspect": cmd_inspect, "fold": cmd_fold, "tune": cmd_tune, "eval": cmd_eval, "seal": cmd_seal,
            "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.verb:
        ap.print_help()
        return 2
    args.progress = not args.quiet and sys.stderr.isatty()
    if not args.progress:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        return COMMANDS[args.verb](args)
    except SealError as e:
        print(f"sealgguf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sealgguf: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"sealgguf: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
