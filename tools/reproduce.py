"""Regenerate the README's "Results" section: every number and plot in it comes from this script.

    python tools/reproduce.py                  # the full plan (many hours on 2 CPU cores)
    python tools/reproduce.py --quick          # small n, few cells, no 8K/16K tuning (about an hour on 2 cores)
    python tools/reproduce.py --steps lr,ood   # some steps only; the report shows whatever has been run

Every step caches its result under --work (default runs/reproduce[-quick]), so a run that stops
resumes where it was, and the report can be rewritten from the cache at any time (--steps report).
The report goes to docs/results/ (Markdown and PNG) and, with --update-readme, between the result
markers in README.md.

Protocol. Tuning uses the training seeds and picks its learning rate by the loss on the validation
seeds; test accuracy comes from llama.cpp on the exported GGUF, on evaluation seeds no tuning run
ever sees (sealgguf.tasks.seeds.split_seeds). Baseline and sealed models are scored on the same
samples and compared pairwise.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("sweep", "lr", "channel", "samples", "keep", "mix", "ood", "gemma", "exact", "bf16", "long", "extend",
         "selfextend", "cuda", "report")
QUICK_STEPS = tuple(s for s in STEPS if s not in ("long", "extend", "selfextend", "cuda"))  # 8K/16K: hours on a CPU
# Scales tuned on a CUDA machine (tools/cuda_checks.sh: an H200, bf16, the model's full window), taken in by the
# cuda step: folded, checked and scored here. Run name -> (model, scales file, the length it is scored at).
CUDA_DIR = ROOT / "docs" / "results" / "cuda"
CUDA_RUNS = {
    # the default recipe at SmolLM2's window; 2 epochs had the lowest validation loss of the CUDA runs
    "smollm2-lines8192-C-lr0.02-keep10-s50-ep2-bf16-cuda": ("smollm2", "smollm2-8192-C-ep2.safetensors", 8000),
    "smollm2-lines8192-C-lr0.02-keep10-s50-bf16-cuda": ("smollm2", "smollm2-8192-C.safetensors", 8000),
    "smollm2-lines8192-C-exact-lr0.02-keep10-s50-ep2-bf16-cuda": ("smollm2", "smollm2-8192-C-exact-ep2.safetensors",
                                                                  8000),
}


@dataclass
class Plan:
    n_eval: int                                    # samples per tuned-model cell (the issue asks >= 50)
    n_sweep: int                                   # samples per baseline length-sweep cell
    sweep: dict[str, dict[str, list[int]]]         # model -> task -> lengths
    length: int = 1024                             # SmolLM2 tuning/eval length for the sweeps
    samples: int = 50
    lrs_head: list[float] = field(default_factory=lambda: [5e-3, 1e-2, 2e-2, 5e-2])
    lrs_channel: list[float] = field(default_factory=lambda: [2e-2, 1e-2])
    sample_counts: list[int] = field(default_factory=lambda: [10, 25])
    keeps: list[float] = field(default_factory=lambda: [10.0, 3.0])  # knowledge-keeping weights, at the top lr
    mix: list[str] = field(default_factory=lambda: ["lines", "niah", "kv"])
    ood: dict[str, int] = field(default_factory=lambda: {"passkey": 2048, "niah": 2048, "kv": 2048})
    n_ood: int = 30
    n_long: int = 50                               # samples per cell of the long step (8K: ~60 s a sample)
    gemma_length: int = 1024                       # Gemma 3 already fails lines at 1K
    long_lengths: list[int] = field(default_factory=lambda: [2048, 8000])  # up to SmolLM2's window (8192)
    long_tune_lengths: list[int] = field(default_factory=lambda: [4096, 8000])  # the default recipe tuned long, in
    #                                              bf16 (8K: ~83 s a step here, bench_tune)
    extend_length: int = 16000                     # 2x SmolLM2's window
    extend_task: str = "niah"                      # SmolLM2 fails passkey at 2K already (answer format)
    n_extend: int = 20                             # 16K: ~200 s a sample
    extend_tune_length: int = 1024                 # tuning under the scaling at 16K: hours per pass on a CPU
    self_extend: tuple[int, int] = (2, 256)        # G, W: 16K fits SmolLM2's 8K window only with W <= ~330 at G = 2
    n_selfextend: int = 10                         # 16K with Self-Extend: ~200 s a sample
    n_cuda: int = 20                               # the cuda step's cells: the 8K cells scored so far are n = 20
    ppl_windows: int = 4                           # knowledge check: 4 x 512 essay tokens
    val_samples: int = 20


FULL = Plan(
    n_eval=50, n_sweep=20,
    sweep={"smollm2": {"lines": [512, 1024, 2048, 4096], "passkey": [2048, 4096, 8000],
                       "niah": [2048, 4096, 8000], "kv": [1024, 2048, 4096, 8000]},
           "gemma3": {"lines": [1024, 2048, 4096, 8192], "passkey": [8192, 16384, 32000],
                      "niah": [8192, 16384, 32000], "kv": [2048, 4096, 8192]}},
)
QUICK = Plan(
    n_eval=20, n_sweep=5, samples=25, lrs_head=[1e-2], lrs_channel=[], sample_counts=[], keeps=[10.0], n_ood=10,
    sweep={"smollm2": {"lines": [512, 1024, 2048], "passkey": [2048, 4096], "niah": [2048], "kv": [1024, 2048]},
           "gemma3": {"lines": [1024, 2048], "passkey": [8192]}},
    ood={"passkey": 2048, "kv": 2048}, n_extend=3,
)


class Runner:
    """Cached building blocks: evaluate one GGUF on one cell, tune + fold one configuration."""

    def __init__(self, work: Path, plan: Plan, threads: int | None):
        self.work, self.plan, self.threads = work, plan, threads
        (work / "eval").mkdir(parents=True, exist_ok=True)
        (work / "tune").mkdir(parents=True, exist_ok=True)

    def _cached(self, path: Path, compute) -> dict:
        if path.is_file():
            return json.loads(path.read_text())
        t0 = time.time()
        value = compute()
        value["seconds_total"] = round(time.time() - t0, 1)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=1, default=str))
        tmp.replace(path)
        return value

    def model_path(self, name: str) -> Path:
        """A bundled model, or a tuned run's GGUF; one missing beside its scales (a cache rebuilt from
        docs/results/raw, which keeps the scales and not the GGUFs) is folded again from them (fold(), with
        the current engine)."""
        from sealgguf.models import resolve

        if name in ("smollm2", "gemma3"):
            return resolve(name)
        gguf, scales = self.work / "tune" / f"{name}.gguf", self.work / "tune" / f"{name}.scales.safetensors"
        run = self.work / "tune" / f"{name}.json"
        if not gguf.is_file() and scales.is_file() and run.is_file():
            self.fold(json.loads(run.read_text())["model"], scales, gguf)
        return gguf

    def fold(self, model: str, scales: Path, gguf: Path):
        """Fold a run's scales into its base model, the one way every run's GGUF is made."""
        from sealgguf.fold import fold_file

        return fold_file(self.model_path(model), scales, gguf, threads=self.threads or 0, progress=False)

    def eval(self, model: str, task: str, length: int, n: int, rope: tuple[str, float] = ("none", 1.0),
             self_extend: tuple[int, int] = (1, 0)) -> dict:
        """Accuracy of one GGUF (a bundled name or a tuned run's name) on one task x length cell."""
        from sealgguf.eval.harness import EvalOptions, evaluate
        from sealgguf.rope import RopeScaling
        from sealgguf.self_extend import SelfExtend

        suffix = (f"-{rope[0]}{rope[1]:g}" if rope[0] != "none" else "") + \
            (f"-se{self_extend[0]}x{self_extend[1]}" if self_extend[0] > 1 else "")
        tag = f"{model}/{task}-{length}-n{n}{suffix}"
        path = self.work / "eval" / f"{tag.replace('/', '__')}.json"
        for other in (self.work / "eval").glob(f"{model}__{task}-{length}-n*{suffix}.json"):
            # Evaluation seeds are a fixed sequence, so a cached run with more samples holds these n samples.
            m = re.fullmatch(rf"{re.escape(model)}__{task}-{length}-n(\d+){re.escape(suffix)}\.json", other.name)
            if m and int(m[1]) > n:
                return json.loads(other.read_text())

        def compute() -> dict:
            print(f"  eval {tag}", flush=True)
            rep = evaluate(EvalOptions(models=[self.model_path(model)], tasks=[task], lengths=[length], samples=n,
                                       rope=RopeScaling.from_cli(*rope), self_extend=SelfExtend(*self_extend),
                                       threads=self.threads, progress=True))
            lab = rep["models"][0]
            recs = [{"seed": r["seed"], "n_tokens": r["n_tokens"], "expected": r["expected"],
                     "output": r["output"][lab], "correct": bool(r["correct"][lab])} for r in rep["records"]]
            recs.sort(key=lambda r: r["seed"])
            return {"model": model, "task": task, "length": length, "n": n, "rope": list(rope),
                    "self_extend": list(self_extend), "records": recs,
                    "accuracy": sum(r["correct"] for r in recs) / len(recs),
                    "mean_tokens": round(sum(r["n_tokens"] for r in recs) / len(recs))}
        return self._cached(path, compute)

    def tune(self, name: str, model: str, tasks: list[str], granularity: str, length: int, samples: int,
             lr: float, rope: tuple[str, float] = ("none", 0.0), keep: float = 0.0, exact: bool = False,
             self_extend: tuple[int, int] = (1, 0), dtype: str = "fp32") -> dict:
        """Tune scales (train seeds, validation seeds for the loss), fold them into the GGUF, check knowledge.
        The dtype is pinned, never "auto", so that a cached run means the same on every machine: runs named
        without a dtype are fp32; others carry it in their name (shipped_default)."""
        from sealgguf.eval.knowledge import knowledge_check
        from sealgguf.rope import RopeScaling
        from sealgguf.self_extend import SelfExtend
        from sealgguf.tune import TuneOptions, run_tune

        scales, gguf = self.work / "tune" / f"{name}.scales.safetensors", self.work / "tune" / f"{name}.gguf"

        def compute() -> dict:
            print(f"  tune {name}: {model} {','.join(tasks)} SEAL-{granularity[0].upper()} {length} tokens, "
                  f"{samples} samples, lr {lr:g}, keep {keep:g}, {dtype}" + (", exact fold" if exact else ""),
                  flush=True)
            info = run_tune(TuneOptions(model=model, out=scales, tasks=tasks, granularity=granularity, length=length,
                                        exact_fold=exact, self_extend=SelfExtend(*self_extend),
                                        samples=samples, val_samples=self.plan.val_samples, lr=lr, keep=keep,
                                        dtype=dtype,
                                        rope=RopeScaling.from_cli(*rope), progress=True,
                                        checkpointing=None))  # the plan decides (off where it fits)
            folded = self.fold(model, scales, gguf)
            base = self.model_path(model)
            know = knowledge_check([base, gguf], ["base", "sealed"], self.plan.ppl_windows, self.threads)
            return {"name": name, "model": model, "tasks": tasks, "granularity": granularity, "length": length,
                    "samples": samples, "lr": lr, "keep": keep, "rope": list(rope), "exact_fold": exact,
                    "self_extend": list(self_extend), "dtype": dtype,
                    "fold_blocks_requantized": folded.blocks("blocks_requantized"),
                    "tune": {k: v for k, v in info.items() if k != "losses"}, "losses": info["losses"],
                    "fold_rel_rmse": folded.rel_rmse_by_type(), "knowledge": know}
        return self._cached(self.work / "tune" / f"{name}.json", compute)


def adopt(r: Runner, name: str, model: str, scales_src: Path, score_length: int) -> dict:
    """A run tuned on another machine, taken in from its scales file: folded and checked here as Runner.tune
    does, its record made from the file's metadata (tune's own record of the run), scored at `score_length`."""
    import shutil

    from sealgguf import scales as scales_file
    from sealgguf.eval.knowledge import knowledge_check

    scales, gguf = r.work / "tune" / f"{name}.scales.safetensors", r.work / "tune" / f"{name}.gguf"

    def compute() -> dict:
        print(f"  adopt {name}: {scales_src.name}", flush=True)
        shutil.copy2(scales_src, scales)
        loaded = scales_file.load(scales)  # the composed scales, whatever the form
        meta = loaded.metadata
        num = lambda k: float(meta[k])  # noqa: E731 (safetensors metadata is text)
        tune = {k: num(k) for k in ("seconds", "val_exact_match_before", "val_exact_match_after", "val_loss_before",
                                    "val_loss_after")}
        tune.update(device=meta["device"], epochs=int(meta["epochs"]), scale_min=float(loaded.values.min()),
                    scale_max=float(loaded.values.max()), peak_mib=meta.get("peak_mib"))
        folded = r.fold(model, scales, gguf)
        know = knowledge_check([r.model_path(model), gguf], ["base", "sealed"], r.plan.ppl_windows, r.threads)
        return {"name": name, "model": model, "tasks": meta["task"].split(","), "granularity": meta["granularity"],
                "length": int(meta["length"]), "eval_length": score_length, "samples": int(meta["samples"]),
                "lr": num("lr"), "keep": num("keep"), "rope": ["none", 0.0], "exact_fold": meta["form"] == "factorized",
                "self_extend": [1, 0], "dtype": meta["dtype"], "fold_blocks_requantized": folded.blocks(
                    "blocks_requantized"), "tune": tune, "losses": [], "fold_rel_rmse": folded.rel_rmse_by_type(),
                "knowledge": know, "tuned_on": meta["device"]}
    return r._cached(r.work / "tune" / f"{name}.json", compute)


def shipped_default(r: Runner, length: int, rope: tuple[str, float] = ("none", 0.0), dtype: str = "fp32",
                    n_eval: int | None = None, model: str = "smollm2") -> dict:
    """The configuration `sealgguf tune` ships with (sealgguf.tune's defaults), tuned on `model`'s lines, optionally
    under a rope scaling, in `dtype` (named in the run unless fp32), and scored on its tuning cell."""
    from sealgguf.tune import DEFAULT_GRANULARITY, DEFAULT_KEEP, DEFAULT_LR

    g, lr = DEFAULT_GRANULARITY, DEFAULT_LR[DEFAULT_GRANULARITY]
    name = (f"{model}-lines{length}-{g[0].upper()}" + (f"-{rope[0]}{rope[1]:g}" if rope[0] != "none" else "")
            + f"-lr{lr:g}" + (f"-keep{DEFAULT_KEEP:g}" if DEFAULT_KEEP else "") + f"-s{r.plan.samples}"
            + (f"-{dtype}" if dtype != "fp32" else ""))
    run = r.tune(name, model, ["lines"], g, length, r.plan.samples, lr, rope, keep=DEFAULT_KEEP, dtype=dtype)
    n = n_eval or r.plan.n_eval
    r.eval(model, "lines", length, n, rope if rope[0] != "none" else ("none", 1.0))
    r.eval(run["name"], "lines", length, n, rope if rope[0] != "none" else ("none", 1.0))
    return run


def best_lr(runs: list[dict]) -> float:
    """The learning rate with the lowest validation loss after tuning (never the test accuracy)."""
    return min(runs, key=lambda r: r["tune"]["val_loss_after"])["lr"]


def run_steps(r: Runner, steps: list[str]) -> None:
    p = r.plan
    L = p.length
    if "sweep" in steps:
        print("step sweep: baseline accuracy vs length", flush=True)
        for model, tasks in p.sweep.items():
            for task, lengths in tasks.items():
                for n_tok in lengths:
                    r.eval(model, task, n_tok, p.n_sweep)
    needs_lr = {"lr", "samples", "keep", "mix", "ood", "gemma", "long", "extend"} & set(steps)
    lr_runs = []
    if needs_lr:
        print("step lr: SEAL-H learning-rate sweep on SmolLM2 lines", flush=True)
        r.eval("smollm2", "lines", L, p.n_eval)
        for lr in p.lrs_head:
            lr_runs.append(r.tune(f"smollm2-lines{L}-H-lr{lr:g}-s{p.samples}", "smollm2", ["lines"], "head", L,
                                  p.samples, lr))
            if "lr" in steps:
                r.eval(lr_runs[-1]["name"], "lines", L, p.n_eval)
    lr = best_lr(lr_runs) if lr_runs else 1e-2
    best = f"smollm2-lines{L}-H-lr{lr:g}-s{p.samples}"
    if "channel" in steps:
        print("step channel: SEAL-C on SmolLM2 lines", flush=True)
        for lr_c in p.lrs_channel:
            run = r.tune(f"smollm2-lines{L}-C-lr{lr_c:g}-s{p.samples}", "smollm2", ["lines"], "channel", L,
                         p.samples, lr_c)
            r.eval(run["name"], "lines", L, p.n_eval)
    if "samples" in steps:
        print("step samples: number of tuning samples", flush=True)
        for n in p.sample_counts:
            run = r.tune(f"smollm2-lines{L}-H-lr{lr:g}-s{n}", "smollm2", ["lines"], "head", L, n, lr)
            r.eval(run["name"], "lines", L, p.n_eval)
    if "keep" in steps:
        print("step keep: the knowledge-keeping KL term, at the largest learning rate of each granularity", flush=True)
        for gran, lrs in (("head", p.lrs_head), ("channel", p.lrs_channel)):
            for keep in p.keeps if lrs else []:
                run = r.tune(f"smollm2-lines{L}-{gran[0].upper()}-lr{max(lrs):g}-keep{keep:g}-s{p.samples}", "smollm2",
                             ["lines"], gran, L, p.samples, max(lrs), keep=keep)
                r.eval(run["name"], "lines", L, p.n_eval)
    mix = f"smollm2-{'+'.join(p.mix)}{L}-H-lr{lr:g}-s{p.samples}"
    if "mix" in steps:
        print("step mix: tuning on a mix of tasks", flush=True)
        r.tune(mix, "smollm2", p.mix, "head", L, p.samples, lr)
        r.eval(mix, "lines", L, p.n_eval)
    if "ood" in steps:
        print("step ood: scales tuned on one task, measured on others", flush=True)
        shipped = shipped_default(r, L)["name"]
        for task, n_tok in p.ood.items():
            for model in dict.fromkeys(("smollm2", best, shipped) + ((mix,) if "mix" in steps else ())):
                r.eval(model, task, n_tok, p.n_ood)
    if "gemma" in steps:
        print("step gemma: SEAL-H on Gemma 3 270M lines", flush=True)
        G = p.gemma_length
        run = r.tune(f"gemma3-lines{G}-H-lr{lr:g}-s{p.samples}", "gemma3", ["lines"], "head", G, p.samples, lr)
        r.eval("gemma3", "lines", G, p.n_eval)
        r.eval(run["name"], "lines", G, p.n_eval)
    if "exact" in steps:
        print("step exact: the default recipe with factorized scales that fold with no requantization", flush=True)
        shipped = shipped_default(r, L)["name"]
        from sealgguf.tune import DEFAULT_KEEP, DEFAULT_LR

        lr_c = DEFAULT_LR["channel"]
        exact = {}
        for model, length in (("smollm2", L), ("gemma3", p.gemma_length)):
            exact[model] = r.tune(f"{model}-lines{length}-C-exact-lr{lr_c:g}-keep{DEFAULT_KEEP:g}-s{p.samples}", model,
                                  ["lines"], "channel", length, p.samples, lr_c, keep=DEFAULT_KEEP, exact=True)["name"]
            r.eval(model, "lines", length, p.n_eval)
            r.eval(exact[model], "lines", length, p.n_eval)
        r.eval(shipped, "lines", L, p.n_eval)
        # the untied default recipe on Gemma 3 too: is the exact fold's gain there exactness, or SEAL-C itself?
        untied = shipped_default(r, p.gemma_length, model="gemma3")["name"]
        for task, n_tok in p.ood.items():  # out of domain, beside the untied default (the ood step's cells)
            for model in ("smollm2", shipped, exact["smollm2"]):
                r.eval(model, task, n_tok, p.n_ood)
        for task, n_tok in p.ood.items():  # and on Gemma 3, where the exact fold is the candidate default
            for model in ("gemma3", exact["gemma3"], untied):
                r.eval(model, task, n_tok, p.n_ood)
        for LL in p.long_lengths[:1]:  # length transfer
            for model in ("smollm2", shipped, exact["smollm2"]):
                r.eval(model, "lines", LL, p.n_ood)
    if "bf16" in steps:
        print("step bf16: the shipped default tuned with bf16 weights (the fast path on CPUs with bf16 units)",
              flush=True)
        shipped_default(r, L, dtype="bf16")
    if "long" in steps:
        print("step long: SmolLM2 on longer prompts, up to its longest native length", flush=True)
        # First the shipped default recipe (SEAL-C, keep) tuned long in bf16 (the fast path), up to the model's
        # window, and the 1K-tuned default scored at the same length.
        for TL in p.long_tune_lengths:
            shipped_default(r, TL, dtype="bf16", n_eval=p.n_long)
            r.eval(shipped_default(r, L)["name"], "lines", TL, p.n_long)
        # Cheapest first: baselines, then shorter-tuned scales scored at the longer lengths (the shipped default,
        # tuned at the sweep length, and the run tuned at the first long length), then tuning at each longer
        # length (hours at 8K on a CPU).
        first, *longer = p.long_lengths
        for LL in p.long_lengths:
            r.eval("smollm2", "lines", LL, p.n_long)
        runs = {first: r.tune(f"smollm2-lines{first}-H-lr{lr:g}-s{p.samples}", "smollm2", ["lines"], "head", first,
                              p.samples, lr)}
        for transferred in (shipped_default(r, L)["name"], runs[first]["name"]):
            for LL in p.long_lengths:
                r.eval(transferred, "lines", LL, p.n_long)
        for LL in longer:
            runs[LL] = r.tune(f"smollm2-lines{LL}-H-lr{lr:g}-s{p.samples}", "smollm2", ["lines"], "head", LL,
                              p.samples, lr)
            r.eval(runs[LL]["name"], "lines", LL, p.n_long)
    if "extend" in steps:
        print("step extend: SmolLM2 at 2x its window with rope scaling", flush=True)
        # The reference is the model at its longest native length; then YaRN with and without SEAL (the shipped
        # default, tuned without scaling, and the same recipe tuned under YaRN), then the other two scalings.
        E, task, n, yarn = p.extend_length, p.extend_task, p.n_extend, ("yarn", 2.0)
        r.eval("smollm2", task, p.long_lengths[-1], n)
        r.eval("smollm2", task, E, n, yarn)
        r.eval(shipped_default(r, L)["name"], task, E, n, yarn)
        r.eval(shipped_default(r, p.extend_tune_length, yarn)["name"], task, E, n, yarn)
        for kind in ("linear", "ntk"):
            r.eval("smollm2", task, E, n, (kind, 2.0))
    if "selfextend" in steps:
        print("step selfextend: SmolLM2 at 2x its window with Self-Extend (llama.cpp's group attention)", flush=True)
        # The base model under Self-Extend, then the default recipe tuned under the same grouping (at 1K, where
        # W = 256 already groups 3 windows of 4), then the shipped default tuned without it.
        from sealgguf.tune import DEFAULT_KEEP, DEFAULT_LR

        E, task, n, se = p.extend_length, p.extend_task, p.n_selfextend, p.self_extend
        lr_c, T = DEFAULT_LR["channel"], p.extend_tune_length
        run = r.tune(f"smollm2-lines{T}-C-se{se[0]}x{se[1]}-lr{lr_c:g}-keep{DEFAULT_KEEP:g}-s{p.samples}", "smollm2",
                     ["lines"], "channel", T, p.samples, lr_c, keep=DEFAULT_KEEP, self_extend=se)
        r.eval("smollm2", task, E, n, self_extend=se)
        r.eval(run["name"], task, E, n, self_extend=se)
        for model in ("smollm2", run["name"]):  # the tuning cell, for the tuned-runs table
            r.eval(model, "lines", T, p.n_eval, self_extend=se)
        r.eval(shipped_default(r, L)["name"], task, E, n, self_extend=se)
    if "cuda" in steps:
        print("step cuda: scales tuned on a CUDA machine at the model's window, scored here in llama.cpp", flush=True)
        for name, (model, file, length) in CUDA_RUNS.items():
            adopt(r, name, model, CUDA_DIR / file, length)
            r.eval(model, "lines", length, p.n_cuda)
            r.eval(name, "lines", length, p.n_cuda)


def keep_raw(work: Path, raw: Path) -> None:
    """Copy the small part of the cache (every eval's per-sample outputs, every run's record and scales) next to
    the report, so the tables can be checked and rebuilt without re-running: tools/results_report.py RAW."""
    import shutil

    for sub, patterns in (("eval", ("*.json",)), ("tune", ("*.json", "*.scales.safetensors"))):
        (raw / sub).mkdir(parents=True, exist_ok=True)
        for pattern in patterns:
            for f in (work / sub).glob(pattern):
                shutil.copy2(f, raw / sub / f.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small n and few cells (about an hour on 2 CPU cores)")
    ap.add_argument("--steps", help=f"comma-separated subset of: {', '.join(STEPS)} (default: all; with "
                    "--quick all but long, extend and selfextend)")
    ap.add_argument("--work", type=Path, help="cache folder (default runs/reproduce or runs/reproduce-quick)")
    ap.add_argument("--docs", type=Path, help="where the report goes (default docs/results[-quick])")
    ap.add_argument("--update-readme", action="store_true", help="rewrite README.md between the result markers")
    ap.add_argument("--n-sweep", type=int, help="override the samples per baseline-sweep cell")
    ap.add_argument("--n-ood", type=int, help="override the samples per out-of-domain cell")
    ap.add_argument("--n-long", type=int, help="override the samples per cell of the long step")
    ap.add_argument("--n-extend", type=int, help="override the samples per cell of the extend step")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    spec = args.steps or ",".join(QUICK_STEPS if args.quick else STEPS)
    steps = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        ap.error(f"--steps: unknown step(s) {', '.join(bad)} (choose from: {', '.join(STEPS)})")
    plan = replace(QUICK if args.quick else FULL, **{k: v for k, v in (("n_sweep", args.n_sweep),
                                                                     ("n_ood", args.n_ood), ("n_long", args.n_long),
                                                                     ("n_extend", args.n_extend))
                                                    if v})
    work = args.work or ROOT / "runs" / ("reproduce-quick" if args.quick else "reproduce")
    t0 = time.time()
    run_steps(Runner(work, plan, args.threads), steps)
    if "report" in steps:
        from results_report import write_report

        docs = args.docs or ROOT / "docs" / ("results-quick" if args.quick else "results")
        write_report(work, plan, docs, ROOT / "README.md" if args.update_readme else None,
                     command="python tools/reproduce.py" + (" --quick" if args.quick else ""))
        keep_raw(work, docs / "raw")
    print(f"done in {time.time() - t0:.0f} s; cache in {work}")


if __name__ == "__main__":
    main()
