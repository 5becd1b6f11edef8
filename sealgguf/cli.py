"""The `sealgguf` command line: sealgguf VERB IN [OUT] [--options]."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from sealgguf import __version__
from sealgguf.errors import EXIT_ENV, EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, SealError
from sealgguf.tune import DEFAULT_GRANULARITY, DEFAULT_KEEP, DEFAULT_LR, LR_CANDIDATES

EPILOG = """\
typical use:
  sealgguf demo                                   # the whole pipeline on the bundled SmolLM2 (~15 min CPU)
  sealgguf seal smollm2 -o sealed.gguf --task lines --length 1024
  sealgguf tune smollm2 -o scales.safetensors --task lines --granularity head --length 2048
  sealgguf fold model.gguf scales.safetensors -o sealed.gguf
  sealgguf eval model.gguf --compare sealed.gguf --task lines,passkey --lengths 1024,2048 --samples 50
  sealgguf inspect sealed.gguf

MODEL is a GGUF file, a Hugging Face folder (tune only), or a bundled name: smollm2, gemma3.

exit status:
  0  success
  1  a gate failed (eval --min-accuracy / --max-drop); one line per failing cell
  2  bad input or usage: the message names the file, key, tensor, option or value
  3  environment: a missing file or package, permissions, disk full, a llama.cpp build that would crash
  4  internal error (a bug: please report it with the output of --debug)
130  interrupted
Errors are one line on stderr; --debug shows the traceback instead.
"""


EXIT_HELP = "exit status: 0 ok, 1 gate failed, 2 bad input or usage, 3 environment, 4 internal error (--debug)"


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract (`sealgguf: error: ...`, exit status 2), and the exit
    codes under every verb's --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("epilog", EXIT_HELP)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_INPUT, f"sealgguf: error: {self.prog.split()[-1]}: {message} (see --help)\n")


def _list(kind, text: str, what: str) -> list:
    items = [x.strip() for x in text.split(",")]
    if not items or any(not x for x in items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
    try:
        return [kind(x) for x in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}") from None


def _floats(text: str) -> list[float]:
    return _list(float, text, "numbers")


def _ints(text: str) -> list[int]:
    return _list(int, text, "integers")


def _lr(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _max_memory(text: str) -> dict:
    """'0=20GiB,cpu=64GiB' -> {0: '20GiB', 'cpu': '64GiB'}: accelerate's max_memory (GPU indices as ints)."""
    out: dict = {}
    for part in text.split(","):
        dev, sep, size = part.strip().partition("=")
        if not sep or not size or not (dev.isdigit() or dev in ("cpu", "disk", "mps")):
            raise argparse.ArgumentTypeError(f"expected DEVICE=SIZE pairs such as 0=20GiB,cpu=64GiB, got {part!r}")
        out[int(dev) if dev.isdigit() else dev] = size
    return out


def _names(text: str) -> list[str]:
    return _list(str, text, "names")


def _add_tune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tuning (defaults measured on the bundled SmolLM2: README, Results)")
    g.add_argument("--task", type=_names, default=["lines"], help="task(s) to tune on, comma-separated: lines, passkey, niah, "
                   "kv, multikey; several mix round-robin (default: lines)")
    g.add_argument("--granularity", choices=("head", "channel"), default=DEFAULT_GRANULARITY,
                   help="channel: one scale per head channel (SEAL-C, the default); head: one per query head (SEAL-H)")
    g.add_argument("--exact-fold", action="store_true",
                   help="learn scales that fold with no requantization: per channel (or head) of each KV group, "
                        "folded into attn_v's rows, times one scalar per query head (or run of heads spanning a "
                        "quant block), folded into attn_output. The sealed file then equals the tuned model")
    g.add_argument("--length", type=int, default=1024, help="prompt length in the model's tokens (default 1024)")
    g.add_argument("--samples", type=int, default=50, help="synthetic training samples (default 50)")
    g.add_argument("--lr", type=_lr, default=None, help="AdamW learning rate, constant: the key knob (default "
                   f"{DEFAULT_LR['head']:g} head, {DEFAULT_LR['channel']:g} channel; the paper used 0.01 / 0.02 "
                   "without --keep). 'auto' first trains on a few samples at each of "
                   f"{'/'.join(f'{x:g}' for x in LR_CANDIDATES['channel'])} (channel) or "
                   f"{'/'.join(f'{x:g}' for x in LR_CANDIDATES['head'])} (head) and keeps the one with the lowest "
                   "validation loss (+ keep x KL); the sweep is recorded in the scales file and the report")
    g.add_argument("--epochs", type=int, default=1, help="passes over the samples (default 1)")
    g.add_argument("--keep", type=float, default=DEFAULT_KEEP, help="knowledge keeping: add KEEP x KL(baseline || "
                   f"sealed) on plain essay text to the loss; costs a 256-token forward+backward per step (default "
                   f"{DEFAULT_KEEP:g}; 0 is the paper's loss)")
    g.add_argument("--seed", type=int, default=0, help="seed for samples and order (default 0)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)")
    g.add_argument("--device-map", choices=("auto",), help="auto: spread the frozen model with accelerate over every "
                   "GPU, then CPU RAM, then --offload-folder (transformers' big-model placement); activations move "
                   "from device to device and the backward pass follows them. For models larger than one GPU")
    g.add_argument("--offload-folder", help="folder for layers --device-map auto offloads to disk")
    g.add_argument("--max-memory", type=_max_memory, metavar="DEV=SIZE,...",
                   help="with --device-map auto: the most each device may hold, as accelerate's max_memory, e.g. "
                        "0=20GiB,cpu=64GiB (GPU index or cpu, then a size); what does not fit goes to the next "
                        "device, then CPU RAM (offloaded: run on the GPU), then --offload-folder")
    g.add_argument("--fsdp", action="store_true",
                   help="under torchrun / accelerate launch: shard the frozen weights over the processes (torch "
                        "FSDP2, one unit per decoder layer) for a model one device cannot hold; each process "
                        "still tunes its share of every step's samples (--grad-accum a multiple of the processes)")
    g.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="dtype of the frozen weights and the forward/backward pass; the scales and the optimizer "
                        "stay fp32 (default auto: bf16 on a CUDA GPU with bf16 or a CPU with AMX-BF16/AVX512-BF16, "
                        "fp16 on older GPUs, else fp32)")
    _add_rope_args(p)


def _add_imatrix_arg(p: argparse.ArgumentParser, auto: bool = False) -> None:
    what = ("llama.cpp importance matrix (llama-imatrix's GGUF or legacy .dat; `sealgguf imatrix` writes one): "
            "blocks the fold must requantize are also quantized with ggml's importance-weighted quantizer, as "
            "llama-quantize --imatrix does, and each keeps the candidate with the lower weighted error; when the file "
            "holds Gram matrices (sealgguf's), each block's error is also carried into the blocks after it")
    if auto:
        p.add_argument("--imatrix", metavar="FILE|auto|none", default="auto",
                       help=what + ". Default auto: when the scales vary inside quant blocks, collect one from "
                       "64 x 256 essay tokens (as `sealgguf imatrix`; written beside the output); none: plain "
                       "requantization")
    else:
        p.add_argument("--imatrix", metavar="FILE", help=what)


def _add_rope_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("context extension")
    g.add_argument("--rope-scaling", choices=("none", "linear", "yarn", "ntk"), default="none",
                   help="rope scaling to run beyond the native window (default none)")
    g.add_argument("--rope-factor", type=float, default=0.0, help="context extension factor, e.g. 2")
    g.add_argument("--self-extend", metavar="G,W", help="Self-Extend as llama.cpp's group attention (--grp-attn-n G "
                   "--grp-attn-w W): a query sees the keys of its own W-token window at their exact distance and "
                   "older keys in groups of G sharing a position, so prompts reach about W + (context - W) x G "
                   "tokens. W must be a multiple of G. tune learns under it and records it in the sealed file; "
                   "eval's prefix reuse is off with it")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="sealgguf", formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description="Make quantized GGUF models better at long-context retrieval "
                                             "with SEAL attention-head scaling (ACL 2025).", epilog=EPILOG)
    ap.add_argument("--version", action="version", version=f"sealgguf {__version__}")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = ap.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)

    p = sub.add_parser("inspect", help="show a GGUF's attention layout, fold exactness and seal.* metadata")
    p.add_argument("model", help="GGUF file or bundled name")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("fold", help="fold a scales file into a quantized GGUF's attention weights",
                       description="Fold SEAL scales into blk.N.attn_output.weight (and, for scales tuned with "
                                   "--exact-fold, into the rows of blk.N.attn_v), block by block, in each "
                                   "tensor's own quant type. Every other tensor and key is copied unchanged.")
    p.add_argument("model", help="input GGUF (never modified)")
    p.add_argument("scales", help="scales .safetensors written by `sealgguf tune`")
    p.add_argument("-o", "--output", required=True, help="output GGUF (written atomically)")
    p.add_argument("--threads", type=int, default=0, help="worker threads (default: all cores)")
    p.add_argument("--kl-windows", type=int, default=0, metavar="N",
                   help="measure KL(scales applied exactly || sealed) in llama.cpp on N x 512 held-out essay "
                        "tokens, and llama.cpp's floor (the KL any change at all gives, since it quantizes "
                        "activations); stored as seal.fold.kl_exact / kl_floor. Writes temporary copies of the "
                        "model with the folded tensors in F32 (default 0: skip; needs llama-cpp-python)")
    _add_imatrix_arg(p)

    p = sub.add_parser("tune", help="learn SEAL scales on synthetic retrieval data (PyTorch)",
                       description="Learn one scale per attention head (or head channel) on generated samples "
                                   "with the model frozen, and write the scales file that `fold` reads.")
    p.add_argument("model", help="GGUF file (dequantized), Hugging Face folder, or bundled name")
    p.add_argument("-o", "--output", required=True, help="scales file to write (.safetensors)")
    _add_tune_args(p)
    p.add_argument("--val-samples", type=int, default=10, help="held-out samples for exact match (default 10)")
    p.add_argument("--grad-accum", type=int, default=1, help="samples per optimizer step (default 1)")
    p.add_argument("--checkpointing", choices=("auto", "on", "off"), default="auto",
                   help="activation checkpointing (recompute each layer in the backward pass: less memory, a slower "
                   "step). auto (default): off when the memory plan fits the free memory twice over without it")
    p.add_argument("--no-checkpointing", action="store_const", const="off", dest="checkpointing",
                   help="the same as --checkpointing off")
    p.add_argument("--dry-run", action="store_true", help="print the memory and time plan (weights, checkpoints, "
                   "activations, masks, logits; seconds per step) and stop before loading the model. Every run "
                   "checks the plan first and refuses, naming the fix, when it cannot fit")
    p.add_argument("--checkpoint-every", type=int, default=0, help="save progress every N steps")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.ckpt.pt")

    p = sub.add_parser("eval", help="measure retrieval in llama.cpp, optionally against a second model",
                       description="Greedy decoding after each task's answer prefix, the same samples for "
                                   "every model; paired differences with 95% intervals.")
    p.add_argument("model", help="GGUF file or bundled name")
    p.add_argument("--compare", help="second GGUF scored on the same samples")
    p.add_argument("--task", type=_names, default=["lines"], help="comma-separated tasks (default lines)")
    p.add_argument("--lengths", type=_ints, default=[1024], help="comma-separated prompt lengths in tokens, each "
                   "within the model's context (default 1024)")
    p.add_argument("--samples", type=int, default=20, help="samples per cell (default 20); the samples are fixed "
                   "by --seed, so runs are comparable")
    p.add_argument("--depths", type=_floats, help="comma-separated needle depths in [0,1], e.g. 0,0.25,0.5,0.75,1")
    p.add_argument("--json", help="write the report here (schema sealgguf.eval/1: docs/eval-report.md)")
    p.add_argument("--plot", help="write accuracy plots (PNG) here")
    p.add_argument("--ppl-windows", type=int, default=0, help="knowledge check: perplexity and KL over N "
                   "windows of 512 essay tokens (default 0: skip)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-flash-attn", action="store_true")
    p.add_argument("--no-prefix-reuse", action="store_true", help="evaluate every prompt from scratch")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default 0: the same samples every run)")
    p.add_argument("--gpu-layers", type=int, default=0, help="layers llama.cpp offloads to the GPU (Metal, CUDA) "
                   "when llama-cpp-python was built with one: 0 = CPU (default), -1 = all")
    g = p.add_argument_group("CI gate (exit status 1 when a check fails, one line per failing cell)")
    g.add_argument("--min-accuracy", type=float, help="every cell of every model must score at least this")
    g.add_argument("--max-drop", type=float, help="the --compare model may score at most this much below the "
                   "first model, per cell")
    g.add_argument("--junit", help="write JUnit XML here (one test case per cell and model, one per check)")
    _add_rope_args(p)

    p = sub.add_parser("seal", help="tune, fold and evaluate in one go, with a before/after report",
                       description="Tune against the GGUF's own dequantized weights, fold into the same quant "
                                   "types, and compare baseline vs sealed in llama.cpp on held-out samples.")
    p.add_argument("model", help="GGUF file or bundled name")
    p.add_argument("-o", "--output", required=True, help="sealed GGUF; report files are written beside it")
    _add_tune_args(p)
    p.add_argument("--eval-samples", type=int, default=30, help="held-out samples per cell (default 30)")
    p.add_argument("--eval-lengths", type=_ints, help="comma-separated eval lengths (default: the tuning length)")
    p.add_argument("--eval-task", type=_names, help="comma-separated eval tasks (default: the tuning tasks)")
    p.add_argument("--ppl-windows", type=int, default=4, help="knowledge check: perplexity and KL over N windows "
                   "of 512 essay tokens (default 4; 0 skips)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--gpu-layers", type=int, default=0, help="llama.cpp GPU offload for the evaluation "
                   "(0 = CPU, -1 = all)")
    p.add_argument("--base-model", metavar="REPO", help="the model card's base_model, e.g. "
                   "HuggingFaceTB/SmolLM2-135M-Instruct (default: the GGUF's general.base_model.0.repo_url, else "
                   "its general.name)")
    _add_imatrix_arg(p, auto=True)

    p = sub.add_parser("imatrix", help="an importance matrix for attn_output, from essay text, for fold --imatrix",
                       description="Measure the mean square of each attn_output input column over essay text in "
                                   "transformers (the dequantized model) and write it as a llama.cpp GGUF imatrix "
                                   "(what llama-imatrix writes; llama-quantize reads it too). Only attn_output "
                                   "entries: that is the tensor the fold requantizes. The file also holds each "
                                   "entry's Gram matrix (mean x x^T, tensors <weight>.in_gram, which llama.cpp "
                                   "ignores): with it, fold --imatrix carries each requantized block's error into "
                                   "the blocks after it (GPTQ's update), for a smaller change in the layer's output.")
    p.add_argument("model", help="GGUF file, Hugging Face folder, or bundled name")
    p.add_argument("-o", "--output", required=True, help="imatrix GGUF to write (atomically)")
    p.add_argument("--windows", type=int, default=64, help="256-token essay windows (default 64)")
    p.add_argument("--gram", choices=("auto", "yes", "no"), default="auto",
                   help="write the Gram matrices (n_layer x n^2 x 4 bytes; auto: when that is at most 4 GiB)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--device-map", choices=("auto",), help="auto: spread the model with accelerate over every GPU, "
                   "then CPU RAM (as tune --device-map auto)")
    p.add_argument("--max-memory", type=_max_memory, metavar="DEV=SIZE,...",
                   help="with --device-map auto: the most each device may hold (as tune --max-memory)")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="fp32",
                   help="dtype of the weights and the forward pass; the sums stay float64 (default fp32; seal "
                        "collects in its tuning run's dtype; auto as tune's --dtype)")

    p = sub.add_parser("heads", help="which attention heads help retrieval and which hurt it: a layer x head map",
                       description="Remove each attention head in turn (its output scaled to 0 before o_proj) and "
                                   "measure the change in the answer loss on synthetic samples: positive = the head "
                                   "helps, negative = it hurts (the SEAL paper's Figure 2). --method grad estimates "
                                   "the same map from one backward pass per sample (first order, -dL/ds at s = 1).\n\n"
                                   "  sealgguf heads smollm2 --task lines --length 1024 --samples 8 -o heads.json "
                                   "--plot heads.png\n"
                                   "  sealgguf heads smollm2 --scales s.safetensors --plot h.png    # learned scales "
                                   "beside the map, with their rank correlation")
    p.add_argument("model", help="GGUF file, Hugging Face folder or bundled name")
    p.add_argument("--task", default="lines", help="task the samples come from (default lines)")
    p.add_argument("--length", type=int, default=1024, help="prompt length in tokens (default 1024)")
    p.add_argument("--samples", type=int, default=8, help="samples to average over (default 8)")
    p.add_argument("--method", choices=("ablate", "grad"), default="ablate",
                   help="ablate: exact, one batched forward per layer per sample (default); grad: one backward per "
                        "sample")
    p.add_argument("--scales", help="a scales file: plot its per-head scales (SEAL-C: the mean over channels) beside "
                                    "the map, with their Spearman correlation")
    p.add_argument("--apply-scales", action="store_true", help="measure the map with --scales applied (the tuned "
                                                                "model) instead of the base model")
    p.add_argument("-o", "--output", help="write the map as JSON here")
    p.add_argument("--plot", help="write the heatmap PNG here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)")

    p = sub.add_parser("demo", help="seal the bundled SmolLM2 on line retrieval (~15 min on 2 CPU cores)")
    p.add_argument("-o", "--output-dir", default="sealgguf-demo", help="folder for the sealed model and report")
    return ap


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_inspect(args) -> int:
    from sealgguf.fold import exact_per_head, open_gguf, read_layout
    from sealgguf.gguf_file import ATTN_QKV, ATTN_V, field_value
    from sealgguf.models import resolve

    path = resolve(args.model)
    reader = open_gguf(path)
    layout = read_layout(reader, path)
    seal_meta = {k: field_value(reader, k) for k in reader.fields if k.startswith("seal.")}
    value_types: dict[str, int] = {}
    for t in reader.tensors:
        if ATTN_V.match(t.name) or ATTN_QKV.match(t.name):
            value_types[reader.type_name(t)] = value_types.get(reader.type_name(t), 0) + 1
    info = {"file": str(path), "architecture": layout.arch, "layers": layout.n_layer, "query_heads": layout.n_head,
            "kv_heads": layout.n_head_kv, "head_dim": layout.head_dim, "context_length": layout.context_length,
            "attn_output_types": layout.attn_output_types, "per_head_fold_exact": exact_per_head(layout),
            "value_types": value_types,
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
    values = ", ".join(f"{t} x{n}" for t, n in value_types.items()) or "none found"
    print(f"  attn_v / qkv     {values} (tune --exact-fold folds into these rows exactly)")
    print("  seal metadata    " + ("none" if not seal_meta else ""))
    for k, v in seal_meta.items():
        print(f"    {k} = {v}")
    return 0


def cmd_fold(args) -> int:
    from sealgguf.fold import fold_file
    from sealgguf.models import resolve
    from sealgguf.pipeline import exact_kl

    model = resolve(args.model)
    kl = exact_kl(model, Path(args.scales), args.kl_windows, args.threads or None) if args.kl_windows else None
    res = fold_file(model, args.scales, args.output, threads=args.threads, progress=args.progress, measure_kl=kl,
                    imatrix=args.imatrix)
    errs = ", ".join(f"{t} {e:.2e}" for t, e in res.rel_rmse_by_type().items())
    if res.kl:
        errs += (f"; KL(exact || sealed) {res.kl['kl_exact']:.4f} nats/token (llama.cpp's floor for any change: "
                 f"{res.kl['kl_floor']:.4f})")
    print(f"wrote {res.out_path}: {len(res.tensors)} tensors folded ({res.granularity}, {res.form}); "
          f"blocks rescaled {res.blocks('blocks_rescaled')}, requantized {res.blocks('blocks_requantized')} "
          f"({res.blocks('blocks_refit')} kept their levels with refit scales), "
          f"unchanged {res.blocks('blocks_unchanged')}"
          + (f" ({res.blocks('blocks_imatrix')} of the requantized from the imatrix-weighted quantizer"
             + (", with error feedback" if res.error_feedback else "") + ")" if args.imatrix else "")
          + f"; relative RMSE {errs}")
    se = res.self_extend
    if se.active:
        print(f"tuned under Self-Extend: run llama.cpp with {se.llama_cpp_flags()}, sealgguf eval with "
              f"--self-extend {se.group},{se.window} (GGUF has no key for it; seal.tune.self_extend records it)")
    return 0


def _tune_options(args, out: Path):
    from sealgguf.rope import RopeScaling
    from sealgguf.self_extend import SelfExtend
    from sealgguf.tune import TuneOptions

    return TuneOptions(
        model=args.model, out=out, tasks=args.task, granularity=args.granularity, exact_fold=args.exact_fold,
        device_map=args.device_map, offload_folder=args.offload_folder, max_memory=args.max_memory,
        fsdp=args.fsdp,
        length=args.length,
        samples=args.samples, lr=args.lr, epochs=args.epochs, keep=args.keep, seed=args.seed, device=args.device,
        dtype=args.dtype,
        rope=RopeScaling.from_cli(args.rope_scaling, args.rope_factor), self_extend=SelfExtend.from_cli(args.self_extend),
        progress=args.progress)


def cmd_tune(args) -> int:
    from dataclasses import replace

    from sealgguf.tune import run_tune

    opt = replace(_tune_options(args, Path(args.output)), val_samples=args.val_samples, grad_accum=args.grad_accum,
                  checkpointing={"auto": None, "on": True, "off": False}[args.checkpointing],
                  checkpoint_every=args.checkpoint_every,
                  resume=args.resume, dry_run=args.dry_run)
    info = run_tune(opt)
    if opt.dry_run:
        print(info["plan"].describe())
        return 0
    if os.environ.get("RANK", "0") != "0":
        return 0  # torchrun / accelerate launch: the first process reports
    print(f"wrote {args.output}: {args.granularity} scales "
          f"{info['scale_min']:.3f}..{info['scale_max']:.3f}; loss {info['loss_first']:.3f} -> "
          f"{info['loss_last10']:.3f} (last 10); validation exact match {info['val_exact_match_before']:.2f} -> "
          f"{info['val_exact_match_after']:.2f}; {info['seconds']} s on {info['device']}"
          + (f"; peak {info['peak_mib']} MiB (plan {info['plan_peak_mib']})" if info.get("peak_mib") else ""))
    return 0


def cmd_heads(args) -> int:
    import numpy as np

    from sealgguf import heads

    if not args.output and not args.plot:
        raise SealError("heads: give -o FILE.json and/or --plot FILE.png")
    result = heads.head_map(args.model, args.task, args.length, args.samples, args.method, args.scales,
                            args.apply_scales, args.device, args.seed, args.progress)
    if args.output:
        heads.write_json(result, args.output)
    if args.plot:
        heads.plot(result, args.plot)
    d = np.asarray(result["delta_loss"])
    top = np.argsort(d, axis=None)
    fmt = lambda i: f"L{i // d.shape[1]}.H{i % d.shape[1]} ({d.flat[i]:+.3f})"  # noqa: E731
    print(f"{result['model']} {result['task']}@{result['length']}, {result['samples']} samples, {args.method}, "
          f"{result['seconds']} s")
    print("  most helpful heads: " + ", ".join(fmt(i) for i in top[::-1][:5]))
    print("  most harmful heads: " + ", ".join(fmt(i) for i in top[:5]))
    if "spearman_scales_vs_delta_loss" in result:
        print(f"  Spearman(learned scale, loss change): {result['spearman_scales_vs_delta_loss']:+.3f}")
    return 0


def cmd_imatrix(args) -> int:
    from sealgguf.imatrix import collect_to
    from sealgguf.models import resolve

    if args.windows < 1:
        raise SealError(f"--windows must be >= 1, got {args.windows}")
    gram = {"auto": None, "yes": True, "no": False}[args.gram]
    from sealgguf.tune import pick_device, pick_dtype

    device = pick_device(args.device)
    tokens, with_gram = collect_to(args.output, resolve(args.model), args.windows, args.progress, gram, device,
                                   pick_dtype(args.dtype, device), args.device_map, args.max_memory)
    print(f"wrote {args.output}: attn_output importance" + (" and Gram matrices" if with_gram else "")
          + f" over {tokens} tokens of essay text")
    return 0


def cmd_eval(args) -> int:
    from sealgguf import report as rep
    from sealgguf.errors import GateFailed
    from sealgguf.eval.harness import EvalOptions, evaluate
    from sealgguf.self_extend import SelfExtend
    from sealgguf.models import resolve
    from sealgguf.report.gate import Gate, gate_record, junit_xml, run_gate
    from sealgguf.rope import RopeScaling
    from sealgguf.tasks import parse_tasks

    gate = Gate(args.min_accuracy, args.max_drop)
    gate.check_models(2 if args.compare else 1)
    models = [resolve(args.model)] + ([resolve(args.compare)] if args.compare else [])
    report = evaluate(EvalOptions(
        models=models, tasks=parse_tasks(",".join(args.task)), lengths=args.lengths, samples=args.samples,
        depths=args.depths, rope=RopeScaling.from_cli(args.rope_scaling, args.rope_factor), threads=args.threads,
        flash_attn=not args.no_flash_attn, reuse_prefix=not args.no_prefix_reuse, ppl_windows=args.ppl_windows,
        seed=args.seed, progress=args.progress, gpu_layers=args.gpu_layers,
        self_extend=SelfExtend.from_cli(args.self_extend)))
    rows = rep.cells(report)
    checks = run_gate(gate, rows, report["models"])
    if gate.active:
        report["gate"] = gate_record(gate, checks)
    print(rep.table(report))
    if args.json:
        rep.write_json(report, args.json)
    if args.junit:
        from sealgguf.fsutil import atomic_output

        with atomic_output(args.junit) as tmp:
            tmp.write_text(junit_xml(rows, report["models"], checks))
    if args.plot:
        rep.plot(report, args.plot)
    failed = [c.reason for c in checks if not c.passed]
    if failed:
        raise GateFailed(f"gate failed in {len(failed)} check(s):\n" + "\n".join(failed))
    if gate.active:
        print(f"gate passed: {len(checks)} check(s)")
    return 0


def cmd_seal(args) -> int:
    from sealgguf.pipeline import SealOptions, seal

    report = seal(SealOptions(
        tune=_tune_options(args, Path(args.output)), out=Path(args.output), eval_samples=args.eval_samples,
        eval_lengths=args.eval_lengths, eval_tasks=args.eval_task, threads=args.threads,
        ppl_windows=args.ppl_windows, gpu_layers=args.gpu_layers, base_model=args.base_model,
        imatrix=args.imatrix))
    _print_seal(report)
    return 0


def _print_seal(report: dict) -> None:
    from sealgguf import report as rep

    print(report["header"] + rep.table(report))
    print("\nfiles: " + ", ".join(report["paths"].values()))


def cmd_demo(args) -> int:
    from sealgguf.pipeline import SealOptions, seal
    from sealgguf.tune import TuneOptions

    out = Path(args.output_dir) / "SmolLM2-135M-Instruct.sealed.Q4_1.gguf"
    # The shipped defaults (SEAL-C, lr 2e-2, --keep 10) on the task and length they were measured on (README,
    # Results), with 30 held-out samples to keep the demo short.
    tune = TuneOptions(model="smollm2", out=out, tasks=["lines"], length=1024, samples=50, epochs=1,
                       progress=args.progress)
    report = seal(SealOptions(tune=tune, out=out, eval_samples=30))
    _print_seal(report)
    return 0


COMMANDS = {"inspect": cmd_inspect, "fold": cmd_fold, "tune": cmd_tune, "eval": cmd_eval, "seal": cmd_seal,
            "heads": cmd_heads, "imatrix": cmd_imatrix, "demo": cmd_demo}


def _printable(e: SealError) -> str:
    """The message on one line: control characters from a hostile file (a key name with a newline) are
    escaped. A gate failure keeps its one line per failing cell."""
    from sealgguf.errors import GateFailed

    text = str(e)
    lines = text.split("\n") if isinstance(e, GateFailed) else [text]
    return "\n".join(re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", line) for line in lines)


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.verb:
        ap.print_help()
        return EXIT_INPUT
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
        if args.debug:
            raise
        print(f"sealgguf: error: {_printable(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sealgguf: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImportError as e:  # an optional part not installed: tune needs torch, eval llama-cpp-python
        if args.debug:
            raise
        extra = "tune" if (e.name or "").split(".")[0] in ("torch", "transformers", "accelerate") else "eval"
        print(f"sealgguf: error: {args.verb} needs the package {e.name} (pip install -e '.[{extra}]', or bash "
              "tools/setup.sh)", file=sys.stderr)
        return EXIT_ENV
    except (OSError, MemoryError) as e:  # disk full, permissions, out of memory: the machine, not the input
        if args.debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"sealgguf: error: {where}{getattr(e, 'strerror', None) or e or type(e).__name__}", file=sys.stderr)
        return EXIT_ENV
    except Exception as e:  # a bug: one line, and the way to see more
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"sealgguf: error: internal error ({type(e).__name__}: {msg}); run with --debug for the traceback "
              "and please report it", file=sys.stderr)
        return EXIT_INTERNAL
