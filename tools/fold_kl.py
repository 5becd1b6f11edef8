"""What the fold costs, in transformers: the shipped GGUF, the shipped GGUF with the scales applied exactly
(hooks), and the sealed GGUF, all dequantized by transformers and run in fp32 on the same held-out essay
windows. Prints perplexity of each and KL(exact || sealed) (the fold's own cost), next to
KL(shipped || exact) (the scales' cost). One engine throughout, so engine differences do not count.

    .venv/bin/python tools/fold_kl.py MODEL.gguf SCALES.safetensors SEALED.gguf [--windows 8] [--window 512]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def main() -> None:
    import torch
    from transformers.utils import logging

    from sealgguf import scales as scales_file
    from sealgguf.eval.knowledge import knowledge_text
    from sealgguf.tune.model import SealScales, load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("scales", type=Path)
    ap.add_argument("sealed", type=Path)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()
    logging.disable_progress_bar()
    torch.set_grad_enabled(False)

    def logprobs(lm, windows):
        return [torch.log_softmax(lm.model(input_ids=torch.tensor([w])).logits[0, :-1].double(), -1) for w in windows]

    shipped = load(args.model, "cpu")
    ids = shipped.encoder.encode(knowledge_text())
    if shipped.encoder.bos_id is not None:
        ids = [shipped.encoder.bos_id] + ids
    n = args.window
    windows = [ids[i * n:(i + 1) * n] for i in range(args.windows) if len(ids) >= (i + 1) * n]
    lp = {"shipped": logprobs(shipped, windows)}
    s = scales_file.load(args.scales)
    seal = SealScales(shipped.layout, s.granularity)
    with torch.no_grad():
        seal.scales.copy_(torch.from_numpy(s.values))
    seal.attach(shipped.model)
    lp["exact"] = logprobs(shipped, windows)
    seal.detach_hooks()
    del shipped
    lp["sealed"] = logprobs(load(args.sealed, "cpu"), windows)

    def nll(name):
        tot = sum(-l[torch.arange(len(w) - 1), torch.tensor(w[1:])].sum().item() for l, w in zip(lp[name], windows))
        return tot / sum(len(w) - 1 for w in windows)

    def kl(a, b):
        tot = sum((pa.exp() * (pa - pb)).sum().item() for pa, pb in zip(lp[a], lp[b]))
        return tot / sum(len(w) - 1 for w in windows)

    ppl = {k: math.exp(nll(k)) for k in lp}
    print(f"{args.sealed.name}: form {s.form}, {len(windows)} x {n} tokens")
    print(f"  perplexity shipped {ppl['shipped']:.3f}, exact {ppl['exact']:.3f}, sealed {ppl['sealed']:.3f} "
          f"(sealed vs exact {100 * (ppl['sealed'] / ppl['exact'] - 1):+.2f}%)")
    print(f"  KL(shipped || exact) {kl('shipped', 'exact'):.4f}   KL(exact || sealed) {kl('exact', 'sealed'):.5f} "
          "nats/token")


if __name__ == "__main__":
    main()
