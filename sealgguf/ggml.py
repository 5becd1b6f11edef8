"""ggml's own quantizers, from the libggml-base shared library llama-cpp-python ships, through ctypes.

sealgguf's engine (sealgguf._core) quantizes with ggml's reference algorithms. With an importance matrix
ggml switches to its weighted quantizers (the ones llama-quantize --imatrix runs); rather than a second
copy of those, `fold --imatrix` calls ggml itself here.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path

import numpy as np

from sealgguf.errors import EnvironmentProblem


@functools.lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    try:
        import llama_cpp
    except ImportError:
        raise EnvironmentProblem("llama-cpp-python is not installed (ggml's quantizers come with it)") from None
    folder = Path(llama_cpp.__file__).parent / "lib"
    suffix = ".dylib" if sys.platform == "darwin" else ".dll" if sys.platform == "win32" else ".so"
    found = sorted(folder.glob(f"*ggml-base*{suffix}"))
    if not found:
        raise EnvironmentProblem(f"{folder}: no libggml-base{suffix} in llama-cpp-python's install")
    so = ctypes.CDLL(str(found[0]))
    so.ggml_quantize_chunk.restype = ctypes.c_size_t
    so.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                       ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return so


def quantize(x: np.ndarray, type_id: int, importance: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk of float32 rows x [rows, n_per_row] into ggml type `type_id`: the reference quantizer,
    or with `importance` ([n_per_row], one weight per input column) the weighted one llama-quantize uses.
    Returns the raw blocks, [rows, bytes per row]."""
    import gguf

    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n_per_row = x.shape
    block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
    out = np.zeros((rows, n_per_row // block * nbytes), dtype=np.uint8)
    w = None
    if importance is not None:
        w = np.ascontiguousarray(importance, dtype=np.float32)
        assert w.shape == (n_per_row,), (w.shape, n_per_row)
    lib().ggml_quantize_chunk(type_id, ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(out.ctypes.data), 0, rows,
                              n_per_row, ctypes.c_void_p(w.ctypes.data) if w is not None else None)
    return out
