"""Self-Extend in the tuner (transformers) against llama.cpp, on next-token distributions over essay text.

    python tools/self_extend_check.py                          # SmolLM2, 1,000 tokens, G,W = 2,256 and 4,128
    python tools/self_extend_check.py --length 2000 --configs 2,512

For each G,W: the prompt is decoded in llama.cpp under group attention, then `--positions` more tokens one at a
time (each a fresh cache edit when it crosses a window), and their log-probabilities are compared with one
transformers forward under sealgguf.tune.group_attention. Printed, in nats/token (mean KL) and top-1 agreement:

    floor     llama.cpp vs transformers, both without Self-Extend (Q4_1 matmuls vs dequantized fp32)
    effect    transformers with vs without Self-Extend (how much grouping changes the output)
    sealgguf  llama.cpp as sealgguf's eval drives it vs transformers with Self-Extend
    seq_div   the same with llama.cpp's own llama_memory_seq_div, which rotates grouped keys the wrong way
"""

from __future__ import annotations

import argparse

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float((np.exp(p) * (p - q)).sum(-1).mean())


def agree(p: np.ndarray, q: np.ndarray) -> float:
    return float((p.argmax(-1) == q.argmax(-1)).mean())


def llama_logprobs(path, ids: list[int], n_prompt: int, se, native_div: bool = False) -> np.ndarray:
    from sealgguf.eval.runner import LlamaRunner

    r = LlamaRunner(path, n_ctx=len(ids) + 16, threads=None, self_extend=se, reuse_prefix=False)
    r.native_div = native_div
    decode = r._decode_grouped if se.active else r.llm.eval
    rows = []
    try:
        decode(ids[:n_prompt])
        rows.append(r._last_logits().copy())
        for tok in ids[n_prompt:-1]:
            decode([tok])
            rows.append(r._last_logits().copy())
    finally:
        r.close()
    return log_softmax(np.stack(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--length", type=int, default=1000, help="prompt tokens")
    ap.add_argument("--positions", type=int, default=32, help="tokens decoded one at a time after the prompt")
    ap.add_argument("--configs", default="2,256;4,128", help="G,W pairs separated by ';'")
    args = ap.parse_args()

    import torch

    from sealgguf.models import resolve
    from sealgguf.self_extend import SelfExtend
    from sealgguf.tasks.words import anchor_sentences
    from sealgguf.tune import group_attention
    from sealgguf.tune.model import load

    path = resolve(args.model)
    lm = load(path, "cpu")
    ids = lm.encoder.encode(" ".join(anchor_sentences()[:3000]))[: args.length + args.positions]
    if len(ids) < args.length + args.positions:
        raise SystemExit(f"only {len(ids)} tokens of essay text")

    def torch_logprobs(se: SelfExtend) -> np.ndarray:
        group_attention.attach(lm.model, se)
        try:
            with torch.no_grad():
                out = lm.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, args.length - 1:-1]
        finally:
            group_attention.detach(lm.model)
        return log_softmax(out.float().numpy())

    plain_t, plain_l = torch_logprobs(SelfExtend()), llama_logprobs(path, ids, args.length, SelfExtend())
    print(f"{args.model}, {args.length} prompt tokens + {args.positions} decoded one by one; "
          f"KL nats/token (top-1 agreement)")
    print(f"floor (no Self-Extend, llama.cpp vs transformers): {kl(plain_l, plain_t):.5f} ({agree(plain_l, plain_t):.2f})")
    for spec in args.configs.split(";"):
        se = SelfExtend.from_cli(spec)
        t = torch_logprobs(se)
        fixed = llama_logprobs(path, ids, args.length, se)
        native = llama_logprobs(path, ids, args.length, se, native_div=True)
        print(f"G,W {se.group},{se.window}: effect {kl(plain_t, t):.5f} ({agree(plain_t, t):.2f}); "
              f"sealgguf {kl(fixed, t):.5f} ({agree(fixed, t):.2f}); "
              f"seq_div {kl(native, t):.5f} ({agree(native, t):.2f})")


if __name__ == "__main__":
    main()
