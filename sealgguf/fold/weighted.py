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
    from sealgguf import _core, ggml

    rows, n = target.shape
    block, nbytes = _core.block_info(type_id)
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

    block, nbytes = _core.block_info(type_id)
    rows = raw.size // (n_per_row // block * nbytes)
    codes = np.zeros((rows, n_per_row), dtype=np.int32)
    b = _core.dequantize(_core.pack_codes(raw, type_id, n_per_row, codes).reshape(-1), type_id, n_per_row)
    a = _core.dequantize(_core.pack_codes(raw, type_id, n_per_row, codes + 1).reshape(-1), type_id, n_per_row) - b
    return a, b


# GPTQ's lazy batches: a column's error moves the next few columns at once, and the rest of its block (COLUMNS
# columns at a time) and of the tensor (BATCH columns, whole blocks, at a time) in one matrix product each. The
# same arithmetic, grouped so that most of it runs in BLAS; the bytes are the same as column by column.
COLUMNS, BATCH = 32, 512


def _gptq_factor(h: np.ndarray) -> np.ndarray:
    """U, the upper Cholesky factor of h^-1 (h^-1 = U^T U), without inverting h: with R R^T = h for an upper
    triangular R (the Cholesky factor of h with its order reversed), U = R^-1. Half the time of inv + cholesky."""
    r = np.linalg.cholesky(np.ascontiguousarray(h[::-1, ::-1]))[::-1, ::-1]
    return _inv_upper(r)


def _inv_upper(r: np.ndarray, base: int = 256) -> np.ndarray:
    """The inverse of an upper triangular matrix, by halves: [[A, B], [0, D]]^-1 = [[A^-1, -A^-1 B D^-1], [0, D^-1]]."""
    n = r.shape[0]
    if n <= base:
        return np.triu(np.linalg.inv(r))
    k = n // 2
    a, d = _inv_upper(r[:k, :k], base), _inv_upper(r[k:, k:], base)
    out = np.zeros_like(r)
    out[:k, :k], out[k:, k:], out[:k, k:] = a, d, -(a @ r[:k, k:]) @ d
    return out


def _column_errors(w: np.ndarray, u: np.ndarray, column) -> np.ndarray:
    """GPTQ's inner loop over one block's columns w [rows, block] (U's block u [block, block]): column j is
    quantized to column(j, its current values), and its error, divided by U[j, j], moves the block's later
    columns. Returns those scaled errors [rows, block]: their squares summed over the block are what it adds to
    the layer's output error, the later blocks given their chance to absorb it."""
    w = w.copy()
    err = np.empty_like(w)
    n = w.shape[1]
    for start in range(0, n, COLUMNS):
        stop = min(n, start + COLUMNS)
        for j in range(start, stop):
            err[:, j] = (w[:, j] - column(j, w[:, j])) / u[j, j]
            w[:, j + 1:stop] -= err[:, j, None] * u[j, j + 1:stop]
        w[:, stop:] -= err[:, start:stop] @ u[start:stop, stop:]
    return err


def feedback_candidate(engine: np.ndarray, target: np.ndarray, type_id: int, importance: np.ndarray,
                       gram: np.ndarray, requantized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Requantize `target` [rows, n] column by column, carrying each column's rounding error into the columns not
    yet quantized so that the layer's output on activations with Gram matrix `gram` ([n, n], x x^T summed or
    averaged: the update does not depend on its scale) stays close to target @ x: GPTQ (Frantar et al., 2023)
    with ggml's blocks as its groups. With U the upper Cholesky factor of gram^-1, column c's error e moves
    every later column k by -e U[c, k] / U[c, c].

    The blocks are visited in order of falling importance (the Gram diagonal summed over the block: GPTQ's
    act-order, by whole blocks because a block's values share its scale fields). A block the engine requantized
    (`requantized`, [rows, blocks]) has two candidates: the engine's bytes (a fresh quantization of the target, or
    its own levels with refit scale fields), and GPTQ's: scale fields from ggml's importance-weighted quantization
    of the block's current (updated) values, then each column's codes the nearest on that grid to the column as
    updated by the columns before it. Each row's block keeps the candidate that adds less to the output error.
    Blocks the engine rescaled exactly or left unchanged keep its bytes, and their (tiny) error is carried on like
    any other. Returns the raw tensor [rows, bytes] and the blocks that took GPTQ's candidate ([rows, blocks],
    bool; their fields came from the weighted quantizer)."""
    from sealgguf import _core, ggml

    rows, n = target.shape
    block, nbytes = _core.block_info(type_id)
    code_min, code_max = _core.code_range(type_id)
    nb = n // block
    h = np.array(gram, dtype=np.float64)
    dead = np.diag(h) <= 0  # columns that never saw an activation: nothing to protect
    h[dead, dead] = 1.0
    h[np.diag_indices(n)] += DAMP * float(np.mean(np.diag(h)))
    order = np.argsort(-np.diag(h).reshape(nb, block).sum(1), kind="stable")
    perm = (order[:, None] * block + np.arange(block)).reshape(-1)
    u = _gptq_factor(h[np.ix_(perm, perm)])
    w = target[:, perm].astype(np.float64)  # columns in visiting order, updated as the errors are carried
    engine = engine.reshape(rows, nb, nbytes)
    have = _core.dequantize(engine.reshape(-1), type_id, n).astype(np.float64)
    out = engine.copy()
    take = np.zeros((rows, nb), dtype=bool)
    per_batch = max(1, BATCH // block)  # whole blocks
    for first in range(0, nb, per_batch):
        lo, hi = first * block, min(nb, first + per_batch) * block  # the batch's columns in visiting order
        batch_err = np.empty((rows, hi - lo))
        for k in range(first, hi // block):
            b = order[k]
            at = slice(k * block, (k + 1) * block)  # the block's columns in visiting order
            cols = slice(b * block, (b + 1) * block)  # and in the file
            u_bb = u[at, at]
            # the engine's bytes, fixed in advance: errors E with E U_bb = W - Q, the loop's result in one product
            err = (w[:, at] - have[:, cols]) @ _inv_upper(u_bb)
            redo = np.flatnonzero(requantized[:, b])
            if redo.size:
                fields = ggml.quantize(w[redo, at], type_id, importance[cols])
                a, off = code_grid(fields, type_id, block)
                step = np.where(a == 0, 1, a)  # a zero step: every code gives `off`
                codes = np.empty(a.shape, dtype=np.int32)

                def nearest(j: int, x: np.ndarray) -> np.ndarray:
                    codes[:, j] = np.clip(np.rint((x - off[:, j]) / step[:, j]), code_min, code_max)
                    return a[:, j] * codes[:, j].astype(np.float32) + off[:, j]

                err_gptq = _column_errors(w[redo, at], u_bb, nearest)
                better = np.square(err_gptq).sum(1) < np.square(err[redo]).sum(1)
                rows_gptq = redo[better]
                take[rows_gptq, b] = True
                err[rows_gptq] = err_gptq[better]
                if rows_gptq.size:
                    out[rows_gptq, b] = _core.pack_codes(fields[better], type_id, block, codes[better])
            batch_err[:, at.start - lo:at.stop - lo] = err
            w[:, at.stop:hi] -= err @ u[at, at.stop:hi]  # the rest of the batch now
        w[:, hi:] -= batch_err @ u[lo:hi, hi:]  # the rest of the tensor once per batch
    return out.reshape(rows, -1), take
