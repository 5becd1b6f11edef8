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

    shipped = load(args.model, "cpu")
    ids = shipped.encoder.encode(knowledge_text())
    if shipped.encoder.bos_id is not None:
        ids = [shipped.encoder.bos_id] + ids
    n = args.window
    windows = [ids[i * n:(i + 1) * n] for i in range(args.windows) if len(ids) >= (i + 1) * n]
    s = scales_file.load(args.scales)
    seal = SealScales(shipped.layout, s.granularity)
    with torch.no_grad():
        seal.scales.copy_(torch.from_numpy(s.values))
    seal.attach(shipped.model)
    sealed = load(args.sealed, "cpu")

    # one window at a time, all three models on it: only one window's log-probabilities are ever held (a
    # 262k-token vocabulary makes each 512-token window 1 GiB in float64)
    nll_sum = {"shipped": 0.0, "exact": 0.0, "sealed": 0.0}
    kl_sum = {("shipped", "exact"): 0.0, ("exact", "sealed"): 0.0}
    for w in windows:
        x, y = torch.tensor([w]), torch.tensor(w[1:])
        with seal.bypassed():
            lp = {"shipped": torch.log_softmax(shipped.model(input_ids=x).logits[0, :-1].double(), -1)}
        lp["exact"] = torch.log_softmax(shipped.model(input_ids=x).logits[0, :-1].double(), -1)
        lp["sealed"] = torch.log_softmax(sealed.model(input_ids=x).logits[0, :-1].double(), -1)
        for name, l in lp.items():
            nll_sum[name] -= l[torch.arange(len(w) - 1), y].sum().item()
        for a, b in kl_sum:
            kl_sum[a, b] += (lp[a].exp() * (lp[a] - lp[b])).sum().item()
    tokens = sum(len(w) - 1 for w in windows)

    def nll(name):
        return nll_sum[name] / tokens

    def kl(a, b):
        return kl_sum[a, b] / tokens

    ppl = {k: math.exp(nll(k)) for k in nll_sum}
    print(f"{args.sealed.name}: form {s.form}, {len(windows)} x {n} tokens")
    print(f"  perplexity shipped {ppl['shipped']:.3f}, exact {ppl['exact']:.3f}, sealed {ppl['sealed']:.3f} "
          f"(sealed vs exact {100 * (ppl['sealed'] / ppl['exact'] - 1):+.2f}%)")
    print(f"  KL(shipped || exact) {kl('shipped', 'exact'):.4f}   KL(exact || sealed) {kl('exact', 'sealed'):.5f} "
          "nats/token")


if __name__ == "__main__":
    main()
