"""Knowledge kept: perplexity on essay text at a short context, and the mean KL divergence between
the next-token distributions of two models on the same text."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sealgguf.errors import SealError

WINDOW = 512


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def knowledge_text() -> str:
    """Essay text from the end of the corpus (the knowledge-keeping term trains on the start)."""
    from sealgguf.tasks.words import knowledge_sentences

    return " ".join(knowledge_sentences())


def knowledge_check(models: list[Path], labels: list[str], n_windows: int, threads: int | None,
                    gpu_layers: int = 0) -> dict:
    from sealgguf.eval.backend import load_llama

    llms = [load_llama(p, gpu_layers, n_ctx=WINDOW, n_batch=WINDOW, logits_all=True,
                       n_threads=threads or os.cpu_count()) for p in models]
    ids = llms[0].tokenize(knowledge_text().encode("utf-8"), add_bos=True)
    nll = np.zeros(len(llms))
    kl_sum, n = 0.0, 0
    for w in range(n_windows):
        chunk = ids[w * WINDOW:(w + 1) * WINDOW]
        if len(chunk) < WINDOW:
            break
        logps = []
        for i, llm in enumerate(llms):
            llm.reset()
            llm.eval(chunk)
            lp = _log_softmax(np.array(llm.scores[: WINDOW - 1], dtype=np.float64))
            nll[i] += -lp[np.arange(WINDOW - 1), chunk[1:]].sum()
            logps.append(lp)
        if len(logps) == 2:
            p = np.exp(logps[0])
            kl_sum += float((p * (logps[0] - logps[1])).sum())
        n += WINDOW - 1
    for llm in llms:
        llm.close()
    if n == 0:
        raise SealError(f"knowledge check: the held-out essay text has fewer than {WINDOW} tokens")
    out = {"tokens": n, "perplexity": {lab: float(np.exp(nll[i] / n)) for i, lab in enumerate(labels)}}
    if len(llms) == 2:
        out["mean_kl"] = kl_sum / n
    return out
