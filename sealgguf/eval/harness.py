"""`sealgguf eval`: score one or two GGUF files on the same generated samples in llama.cpp."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sealgguf.errors import SealError
from sealgguf.eval.runner import LlamaRunner, RopeOptions
from sealgguf.tasks import get_task, make_sample
from sealgguf.tune.data import split_seeds


@dataclass
class EvalOptions:
    models: list[Path]                      # one model, or baseline then candidate
    tasks: list[str] = field(default_factory=lambda: ["lines"])
    lengths: list[int] = field(default_factory=lambda: [1024])
    samples: int = 20
    depths: list[float] | None = None       # None: each sample draws its own position
    rope: RopeOptions = field(default_factory=RopeOptions)
    threads: int | None = None
    flash_attn: bool = True
    reuse_prefix: bool = True
    ppl_windows: int = 0                    # knowledge check: windows of 512 tokens (0 = skip)
    seed: int = 0
    progress: bool = True


def model_labels(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def evaluate(opt: EvalOptions) -> dict:
    from tqdm import tqdm

    if not 1 <= len(opt.models) <= 2:
        raise SealError("eval takes one model, or two with --compare")
    tasks = [get_task(t) for t in opt.tasks]
    n_ctx = max(opt.lengths) + max(t.max_answer_tokens for t in tasks) + 8
    labels = model_labels(opt.models)
    runners = [LlamaRunner(p, n_ctx, opt.threads, opt.flash_attn, opt.rope, opt.reuse_prefix) for p in opt.models]
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
              "lengths": opt.lengths, "depths": opt.depths, "samples": opt.samples,
              "rope": {"kind": opt.rope.kind, "factor": opt.rope.factor}, "records": records, "timing": timing}
    if opt.ppl_windows:
        from sealgguf.eval.knowledge import knowledge_check

        report["knowledge"] = knowledge_check(opt.models, labels, opt.ppl_windows, opt.threads)
    return report
