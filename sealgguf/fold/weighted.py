"""Requantization weighted by a llama.cpp importance matrix (sealgguf.imatrix), for blocks the fold cannot
rescale exactly: ggml's own weighted quantizer (as llama-quantize --imatrix) against the engine's result,
the better of the two kept block by block. With the activations' Gram matrix as well (an imatrix that
sealgguf collected), the requantized blocks are quantized column by column with each column's error carried
into the columns after it (feedback_candidate, GPTQ)."""

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
# columns are nearly dependent, as GPTQ does (0.01-0.1 there). Measured on SmolLM2's shipped default scales,
# KL(exact || sealed) in transformers on held-out essay text (tools/fold_kl.py): 0.01 -> 0.00222, 0.03 -> 0.00209,
# 0.1 -> 0.00224 (column by column, in file order); 0.03 with the blocks in importance order 0.00206.
DAMP = 0.03


def code_grid(raw: np.ndarray, type_id: int, n_per_row: int) -> tuple[np.ndarray, np.ndarray]:
    """Each value's grid under its block's scale fields: value = a * code + b for every code in
    _core.code_range(type_id) (ggml blocks are affine in their codes within a sub-block). Returns (a, b),
    float32 [rows, n_per_row], read off the blocks themselves with every code 0 and then 1."""
    from sealgguf import _core

    rows = raw.size // (_core.block_info(type_id)[1] * (n_per_row // _core.block_info(type_id)[0]))
    codes = np.zeros((rows, n_per_row), dtype=np.int32)
    b = _core.dequantize(_core.pack_codes(raw, type_id, n_per_row, codes).reshape(-1), type_id, n_per_row)
    a = _core.dequantize(_core.pack_codes(raw, type_id, n_per_row, codes + 1).reshape(-1), type_id, n_per_row) - b
    return a, b


def feedback_candidate(engine: np.ndarray, target: np.ndarray, type_id: int, importance: np.ndarray,
                       gram: np.ndarray, requantized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Requantize `target` [rows, n] column by column, carrying each column's rounding error into the columns not
    yet quantized so that the layer's output on activations with Gram matrix `gram` ([n, n], x x^T summed or
    averaged: the update does not depend on its scale) stays close to target @ x: GPTQ (Frantar et al., 2023)
    with ggml's blocks as its groups. With U the upper Cholesky factor of gram^-1, column c's error e moves
    every later column k by -e U[c, k] / U[c, c].

    The blocks are visited in order of falling importance (the Gram diagonal summed over the block: GPTQ's
    act-order, by whole blocks because a block's values share its scale fields). When a block is reached, its
    scale fields come from ggml's importance-weighted quantization of its current (updated) values; each column's
    codes are then the nearest on that grid to the column as updated by the columns before it. Blocks the engine
    rescaled exactly or left unchanged (`requantized` false, [rows, blocks]) keep the engine's bytes, and their
    (tiny) error is carried on like any other. Returns the raw tensor [rows, bytes] and the blocks that were
    requantized here ([rows, blocks], bool; their fields came from the weighted quantizer)."""
    import gguf

    from sealgguf import _core, ggml

    rows, n = target.shape
    block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
    code_min, code_max = _core.code_range(type_id)
    nb = n // block
    h = np.array(gram, dtype=np.float64)
    dead = np.diag(h) <= 0  # columns that never saw an activation: nothing to protect
    h[dead, dead] = 1.0
    h[np.diag_indices(n)] += DAMP * float(np.mean(np.diag(h)))
    order = np.argsort(-np.diag(h).reshape(nb, block).sum(1), kind="stable")
    perm = (order[:, None] * block + np.arange(block)).reshape(-1)
    u = np.linalg.cholesky(np.linalg.inv(h[np.ix_(perm, perm)])).T
    w = target[:, perm].astype(np.float64)  # columns in visiting order, updated as the errors are carried
    engine = engine.reshape(rows, nb, nbytes)
    have = _core.dequantize(engine.reshape(-1), type_id, n)
    out = engine.copy()
    for k, b in enumerate(order):
        lo = k * block
        cols = slice(b * block, (b + 1) * block)  # the block's columns in the file
        redo = requantized[:, b]
        got = have[:, cols].astype(np.float64)  # kept blocks' values; redone rows are overwritten below
        if redo.any():
            fields = ggml.quantize(w[redo, lo:lo + block], type_id, importance[cols])
            a, off = code_grid(fields, type_id, block)
            step = np.where(a == 0, 1, a)  # a zero step: every code gives `off`
            codes = np.empty(a.shape, dtype=np.int32)
        err = np.empty((rows, block))
        for j in range(block):
            c = lo + j
            if redo.any():
                code = np.clip(np.rint((w[redo, c] - off[:, j]) / step[:, j]), code_min, code_max)
                codes[:, j] = code
                got[redo, j] = a[:, j] * code.astype(np.float32) + off[:, j]
            err[:, j] = (w[:, c] - got[:, j]) / u[c, c]
            w[:, c + 1:lo + block] -= np.outer(err[:, j], u[c, c + 1:lo + block])
        if redo.any():
            out[redo, b] = _core.pack_codes(fields, type_id, block, codes)
        w[:, lo + block:] -= err @ u[lo:lo + block, lo + block:]
    return out.reshape(rows, -1), requantized.copy()
