"""ggml itself, as the oracle: the libggml-base shared library that llama-cpp-python ships,
called through ctypes. Used by the tests and by tools/bench_fold.py."""

from __future__ import annotations

import ctypes

import numpy as np

import sealgguf.ggml

# ggml type id -> (name used in ggml's function names, values per block, bytes per block)
TYPES = {
    0: ("f32", 1, 4), 1: ("f16", 1, 2), 30: ("bf16", 1, 2),
    2: ("q4_0", 32, 18), 3: ("q4_1", 32, 20), 6: ("q5_0", 32, 22), 7: ("q5_1", 32, 24), 8: ("q8_0", 32, 34),
    10: ("q2_K", 256, 84), 11: ("q3_K", 256, 110), 12: ("q4_K", 256, 144), 13: ("q5_K", 256, 176),
    14: ("q6_K", 256, 210),
}
QUANT_TYPES = [t for t, (_, bs, _) in TYPES.items() if bs > 1]


lib = sealgguf.ggml.lib  # the same ctypes binding sealgguf's fold --imatrix uses


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def dequantize(raw: np.ndarray, type_id: int, n: int) -> np.ndarray:
    name = TYPES[type_id][0]
    out = np.empty(n, dtype=np.float32)
    if name == "f32":
        return raw.view(np.float32).copy()
    fn = {"f16": "ggml_fp16_to_fp32_row", "bf16": "ggml_bf16_to_fp32_row"}.get(name, f"dequantize_row_{name}")
    getattr(lib(), fn)(_ptr(np.ascontiguousarray(raw)), _ptr(out), ctypes.c_int64(n))
    return out


def quantize(x: np.ndarray, type_id: int) -> np.ndarray:
    """ggml_quantize_chunk without an importance matrix: ggml's reference quantizer for the type."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n_per_row = x.shape
    _, bs, ts = TYPES[type_id]
    out = np.zeros(rows * (n_per_row // bs) * ts, dtype=np.uint8)
    lib().ggml_quantize_chunk(type_id, _ptr(x), _ptr(out), 0, rows, n_per_row, None)
    return out.reshape(rows, -1)
