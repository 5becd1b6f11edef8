"""Fast GGUF -> PyTorch, through transformers' own converter (its name mapping, Q/K permutation and tokenizer
conversion are kept; nothing here converts a tensor name or a layout).

transformers' legacy GGUF path (`load_gguf_checkpoint`, used for llama and gemma3) opens the file with
gguf-py's GGUFReader once for the config, once for the tokenizer and once for the weights, and GGUFReader
builds a numpy view per element of every metadata array (Gemma 3's 262k-entry vocabulary, three times). It
then dequantizes with gguf-py's numpy code, and maps tensor names by building gguf-py's TensorNameMap
once per module of the model (397 times for SmolLM2). Inside `fast_gguf()`:
  * GGUFReader is parsed once per file and shared by the three calls, and the metadata-only result
    (config and tokenizer) is computed once and handed out as copies;
  * gguf-py's tensor name map is built once per (architecture, layer count);
  * quantized tensors are dequantized by sealgguf's C++ engine (bit-identical to ggml, multithreaded),
    where gguf-py would run numpy; types the engine lacks still go to gguf-py.
transformers then casts each tensor to the requested dtype as it is produced, so at most one tensor exists
in float32 at a time.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def fast_gguf() -> Iterator[None]:
    import gguf

    from sealgguf import _core

    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    original_reader, original_dequantize = gguf.GGUFReader, gguf.dequantize
    original_name_map, original_checkpoint = gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint

    @functools.cache
    def reader(path: str, mtime_ns: int):
        return original_reader(path)

    def cached_reader(path, mode="r"):
        if mode != "r":
            return original_reader(path, mode)
        return reader(os.fspath(path), os.stat(path).st_mtime_ns)

    def dequantize(data: np.ndarray, qtype) -> np.ndarray:
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) or not _core.supported(int(qtype)):
            return original_dequantize(data, qtype)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n_per_row = data.shape[-1] // size * block
        rows = _core.dequantize(np.ascontiguousarray(data).reshape(-1), int(qtype), n_per_row)
        return rows.reshape(*data.shape[:-1], n_per_row)

    @functools.cache
    def metadata(path: str, mtime_ns: int) -> dict:
        return original_checkpoint(path, return_tensors=False)

    def load_checkpoint(path, return_tensors=False, **kw):
        if return_tensors or kw:
            return original_checkpoint(path, return_tensors=return_tensors, **kw)
        return copy.deepcopy(metadata(os.fspath(path), os.stat(path).st_mtime_ns))  # callers pop from it

    gguf.GGUFReader, gguf.dequantize = cached_reader, dequantize
    gguf.get_tensor_name_map = functools.cache(original_name_map)
    hf_gguf.load_gguf_checkpoint = load_checkpoint
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.dequantize = original_reader, original_dequantize
        gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint = original_name_map, original_checkpoint
