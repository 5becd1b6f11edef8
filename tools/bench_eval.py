"""Benchmark the eval harness.

1. A NIAH grid (lengths x depths, one haystack per seed): tokens llama.cpp actually processes with and
   without KV prefix reuse, and whether every answer stayed the same.
2. Harness overhead: evaluate() wall time vs raw llama-cpp-python doing the same work (the same prompt
   tokens evaluated from scratch, plus the same generated tokens one at a time).

    .venv/bin/python tools/bench_eval.py [--model smollm2] [--lengths 512,1024,2048] [--depths 0,0.25,0.5,0.75,1]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--lengths", default="512,1024,2048")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--samples", type=int, default=1, help="haystacks (seeds)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    from llama_cpp import Llama

    from sealgguf.eval.harness import EvalOptions, evaluate
    from sealgguf.eval.runner import LlamaRunner
    from sealgguf.models import resolve
    from sealgguf.tasks import get_task, make_sample

    model = resolve(args.model)
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    opts = dict(models=[model], tasks=["niah"], lengths=lengths, depths=depths, samples=args.samples,
                threads=args.threads, progress=False)
    runs = {}
    for reuse in (True, False):
        t0 = time.perf_counter()
        runs[reuse] = evaluate(EvalOptions(**opts, reuse_prefix=reuse))
        runs[reuse]["wall"] = time.perf_counter() - t0
    lab = runs[True]["models"][0]
    key = lambda r: (r["seed"], r["length"], r["depth"])  # noqa: E731
    out_reuse = {key(r): r["output"][lab] for r in runs[True]["records"]}
    out_fresh = {key(r): r["output"][lab] for r in runs[False]["records"]}
    tok_r, tok_f = runs[True]["timing"][lab]["tokens_processed"], runs[False]["timing"][lab]["tokens_processed"]
    n = len(out_reuse)
    print(f"NIAH grid on {model.name}: {len(lengths)} lengths x {len(depths)} depths x {args.samples} haystack(s) "
          f"= {n} prompts")
    print(f"  tokens processed: with reuse {tok_r}, without {tok_f} -> {tok_f / tok_r:.2f}x fewer; "
          f"answers identical: {sum(out_reuse[k] == out_fresh[k] for k in out_reuse)}/{n}")
    print(f"  generation time: with reuse {runs[True]['timing'][lab]['seconds']} s, "
          f"without {runs[False]['timing'][lab]['seconds']} s")

    # Raw llama-cpp-python on exactly the work of the no-reuse run.
    runner = LlamaRunner(model, max(lengths) + 64, args.threads, reuse_prefix=False)
    task = get_task("niah")
    work = []
    for r in runs[False]["records"]:
        s = make_sample(task, r["seed"], r["length"], runner.encoder.count, depth=r["depth"])
        work.append((runner.encoder.prompt_ids(s), runner.encoder.encode(r["output"][lab])))
    runner.close()
    llm = Llama(model_path=str(model), n_ctx=max(lengths) + 64, n_batch=512, n_ubatch=512,
                n_threads=args.threads, flash_attn=True, swa_full=True, verbose=False)
    t0 = time.perf_counter()
    for prompt, gen in work:
        llm.reset()
        llm.eval(prompt)
        for tok in gen:
            llm.eval([tok])
    raw = time.perf_counter() - t0
    harness = runs[False]["timing"][lab]["seconds"]
    print(f"  raw llama-cpp-python on the same tokens: {raw:.1f} s; harness generation {harness:.1f} s "
          f"({(harness - raw) / raw * 100:+.1f}%); harness wall incl. sample generation {runs[False]['wall']:.1f} s")


if __name__ == "__main__":
    main()
