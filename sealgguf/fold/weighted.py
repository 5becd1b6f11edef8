"""Requantization weighted by a llama.cpp importance matrix (sealgguf.imatrix), for blocks the fold cannot
rescale exactly: ggml's own weighted quantizer (as llama-quantize --imatrix) against the engine's result,
the better of the two kept block by block."""

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
