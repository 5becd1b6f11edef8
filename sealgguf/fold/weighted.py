"""Requantization weighted by a llama.cpp importance matrix (sealgguf.imatrix), for blocks the fold cannot
rescale exactly: ggml's own weighted quantizer (as llama-quantize --imatrix) against the engine's result,
the better of the two kept block by block. With the activations' Gram matrix as well (an imatrix that
sealgguf collected), each block's error is also carried into the blocks after it (feedback_candidate)."""

from __future__ import annotations

import numpy as np


def weighted_candidate(engine: np.ndarray, target: np.ndarray, type_id: int, importance: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per block, the engine's result or ggml's importance-weighted requantization of `target` [rows, n], whichever
    has the lower weighted squared error against `target`. `engine` is the engine's raw tensor ([rows, bytes]).
    Returns the chosen raw blocks and which blocks came from the weighted quantizer ([rows, blocks], bool)."""
    import gguf

    from sealgguf import _core, ggml

    rows, n = target.shape
    block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
    weighted = ggml.quantize(target, type_id, importance)
    w = importance.reshape(1, n // block, block)

    def err(raw: np.ndarray) -> np.ndarray:
        got = _core.dequantize(raw.reshape(-1), type_id, n).reshape(rows, n // block, block)
        return (np.square(got - target.reshape(rows, n // block, block)) * w).sum(-1)

    take = err(weighted) < err(engine)
    out = np.where(take[:, :, None], weighted.reshape(rows, -1, nbytes), engine.reshape(rows, -1, nbytes))
    return out.reshape(rows, -1), take


# Damping added to the Gram matrix's diagonal, as a share of its mean: keeps the inverse well conditioned where
# columns are nearly dependent, as GPTQ does (0.01-0.1 there; 0.1 measured best on SmolLM2's held-out text).
DAMP = 0.1


def feedback_candidate(engine: np.ndarray, target: np.ndarray, type_id: int, importance: np.ndarray,
                       gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Requantize `target` [rows, n] one column block at a time, carrying each block's rounding error into the
    columns not yet quantized so that the layer's output on activations with Gram matrix `gram` ([n, n], x x^T
    summed or averaged: the update does not depend on its scale) stays close to target @ x. This is the block
    form of GPTQ's update (Frantar et al., 2023): the block's error E takes the rest to
    W_rest - E U_bb^-1 U_b,rest, U the upper Cholesky factor of gram^-1. Each block is the engine's (fresh or
    refit, from `engine`) or ggml's importance-weighted quantization of the updated columns, whichever has the
    lower weighted error against them. Returns the raw tensor and which blocks came from the weighted
    quantizer ([rows, blocks], bool)."""
    import gguf

    from sealgguf import _core, ggml

    rows, n = target.shape
    block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
    h = np.array(gram, dtype=np.float64)
    dead = np.diag(h) <= 0  # columns that never saw an activation: nothing to protect
    h[dead, dead] = 1.0
    h[np.diag_indices(n)] += DAMP * float(np.mean(np.diag(h)))
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    engine = engine.reshape(rows, n // block, nbytes)
    have = _core.dequantize(engine.reshape(-1), type_id, n)
    w = target.astype(np.float64)
    out = np.empty_like(engine)
    take = np.zeros((rows, n // block), dtype=bool)
    for b in range(n // block):
        lo, hi = b * block, (b + 1) * block
        want = np.ascontiguousarray(w[:, lo:hi], dtype=np.float32)
        imp = np.ascontiguousarray(importance[lo:hi], dtype=np.float32)
        fresh = ggml.quantize(want, type_id, imp).reshape(rows, nbytes)
        got = _core.dequantize(fresh.reshape(-1), type_id, block)
        take[:, b] = (np.square(got - want) * imp).sum(1) < (np.square(have[:, lo:hi] - want) * imp).sum(1)
        out[:, b] = np.where(take[:, b, None], fresh, engine[:, b])
        q = np.where(take[:, b, None], got, have[:, lo:hi])
        if hi < n:
            w[:, hi:] -= (w[:, lo:hi] - q) @ np.linalg.solve(u[lo:hi, lo:hi], u[lo:hi, hi:])
    return out.reshape(rows, -1), take
