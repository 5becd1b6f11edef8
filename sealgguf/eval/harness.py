"""`sealgguf eval`: score one or two GGUF files on the same generated samples in llama.cpp."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sealgguf.errors import SealError
from sealgguf.eval.runner import LlamaRunner, rope_to_apply
from sealgguf.rope import RopeScaling
from sealgguf.self_extend import SelfExtend
from sealgguf.tasks import get_task, make_sample
from sealgguf.tasks.seeds import split_seeds


@dataclass
class EvalOptions:
    models: list[Path]                      # one model, or baseline then candidate
    tasks: list[str] = field(default_factory=lambda: ["lines"])
    lengths: list[int] = field(default_factory=lambda: [1024])
    samples: int = 20
    depths: list[float] | None = None       # None: each sample draws its own position
    rope: RopeScaling = field(default_factory=RopeScaling)
    self_extend: SelfExtend = field(default_factory=SelfExtend)  # llama.cpp group attention (--grp-attn-n/w)
    threads: int | None = None
    gpu_layers: int = 0                     # llama.cpp offload: 0 = CPU, -1 = all layers
    flash_attn: bool = True
    reuse_prefix: bool = True
    ppl_windows: int = 0                    # knowledge check: windows of 512 tokens (0 = skip)
    seed: int = 0
    progress: bool = True


def model_labels(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def check_options(opt: EvalOptions) -> tuple[int, list]:
    """Refuse impossible options before any model is loaded; return the context size to load with and
    each model's opened (validated) GGUF header."""
    from sealgguf.gguf_file import field_value, open_gguf, read_layout

    if not 1 <= len(opt.models) <= 2:
        raise SealError("eval takes one model, or two with --compare")
    if not opt.tasks:
        raise SealError("--task: no task given")
    tasks = [get_task(t) for t in opt.tasks]
    if not opt.lengths:
        raise SealError("--lengths: no length given")
    if any(n < 1 for n in opt.lengths):
        raise SealError(f"--lengths must be positive token counts, got {opt.lengths}")
    if opt.samples < 1:
        raise SealError(f"--samples must be >= 1, got {opt.samples}")
    if opt.depths is not None and (not opt.depths or any(not 0.0 <= d <= 1.0 for d in opt.depths)):
        raise SealError(f"--depths must be fractions in [0, 1], got {opt.depths}")
    if opt.ppl_windows < 0:
        raise SealError(f"--ppl-windows must be >= 0, got {opt.ppl_windows}")
    if opt.threads is not None and opt.threads < 1:
        raise SealError(f"--threads must be >= 1, got {opt.threads}")
    opt.rope.check("--rope-factor")
    opt.self_extend.check()
    if opt.gpu_layers < -1:
        raise SealError(f"--gpu-layers must be -1 (all), 0 (CPU) or a positive count, got {opt.gpu_layers}")
    n_ctx = max(opt.lengths) + max(t.max_answer_tokens for t in tasks) + 8
    readers = []
    for path in opt.models:
        reader = open_gguf(path)
        readers.append(reader)
        layout = read_layout(reader, path)
        tuned = SelfExtend.from_json(field_value(reader, "seal.tune.self_extend"), f"{path}: seal.tune.self_extend")
        if tuned.active and tuned != opt.self_extend:
            print(f"note: {path.name} was tuned under Self-Extend {tuned.group},{tuned.window}: evaluate it with "
                  f"--self-extend {tuned.group},{tuned.window} (llama.cpp: {tuned.llama_cpp_flags()})", file=sys.stderr)
        limit = opt.self_extend.context(rope_to_apply(reader, opt.rope).context(layout.context_length))
        if layout.context_length and n_ctx > limit:
            how = (f"with {opt.rope.kind} x{opt.rope.factor:g} it reaches {limit}" if opt.rope.active
                   else f"with --self-extend {opt.self_extend.group},{opt.self_extend.window} it reaches {limit}"
                   if opt.self_extend.active
                   else "use --rope-scaling linear|yarn|ntk with --rope-factor F, or --self-extend G,W, to go "
                        "beyond it")
            raise SealError(f"--lengths {max(opt.lengths)}: the prompt and answer need {n_ctx} tokens, but "
                            f"{path.name} has a context of {layout.context_length} ({how})")
    return n_ctx, readers


def evaluate(opt: EvalOptions) -> dict:
    from tqdm import tqdm

    n_ctx, readers = check_options(opt)
    tasks = [get_task(t) for t in opt.tasks]
    labels = model_labels(opt.models)
    runners = [LlamaRunner(p, n_ctx, opt.threads, opt.flash_attn, opt.rope, opt.reuse_prefix, opt.gpu_layers, r,
                           opt.self_extend)
               for p, r in zip(opt.models, readers)]
    encoder = runners[0].encoder
    depths = opt.depths or [None]

    # The samples, made once from the first model's tokenizer and shared by every model.
    records = []
    for task in tasks:
        for seed in split_seeds("eval", opt.samples, opt.seed):
            for length in opt.lengths:
                for depth in depths:
                    kw = {"depth": depth} if depth is not None else {}
                    s = make_sample(task, seed, length, encoder.count, **kw)
                    records.append({"task": task.name, "length": length, "depth": depth, "seed": seed,
                                    "n_tokens": s.n_tokens, "expected": s.expected, "sample": s,
                                    "output": {}, "correct": {}})

    if opt.reuse_prefix:
        # Prompts of one seed share their text up to the needle: order them by the needle's absolute
        # position, so each prompt reuses the previous one's KV cache up to that point.
        records.sort(key=lambda r: (r["task"], r["seed"], (r["sample"].meta.get("depth") or 0.0) * r["n_tokens"]))
    timing = {}
    for label, runner in zip(labels, runners):
        t0 = time.time()
        for r in tqdm(records, desc=f"eval {label}", unit="sample", disable=not opt.progress, leave=False):
            s = r["sample"]
            out = runner.generate(runner.encoder.prompt_ids(s), get_task(s.task).max_answer_tokens)
            r["output"][label], r["correct"][label] = out, get_task(s.task).score(s, out)
        timing[label] = {"seconds": round(time.time() - t0, 1), "tokens_processed": runner.tokens_processed}
        runner.close()
    for r in records:
        r.pop("sample")

    report = {"models": labels, "paths": [str(p) for p in opt.models], "tasks": opt.tasks,
              "lengths": opt.lengths, "depths": opt.depths, "samples": opt.samples, "seed": opt.seed,
              "rope": {"kind": opt.rope.kind, "factor": opt.rope.factor},
              "self_extend": {"group": opt.self_extend.group, "window": opt.self_extend.window},
              "records": records, "timing": timing}
    if opt.ppl_windows:
        from sealgguf.eval.knowledge import knowledge_check

        report["knowledge"] = knowledge_check(opt.models, labels, opt.ppl_windows, opt.threads, opt.gpu_layers)
    return report
