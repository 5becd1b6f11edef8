"""Fast GGUF -> PyTorch, through transformers' own converter (its name mapping, Q/K permutation and tokenizer
conversion are kept; nothing here converts a tensor name or a layout).

transformers' legacy GGUF path (`load_gguf_checkpoint`, used for llama and gemma3) opens the file with
gguf-py's GGUFReader once for the config, once for the tokenizer and once for the weights, and GGUFReader
builds a numpy view per element of every metadata array (Gemma 3's 262k-entry vocabulary, three times). It
then dequantizes with gguf-py's numpy code, and maps tensor names by building gguf-py's TensorNameMap
once per module of the model (397 times for SmolLM2). Inside `fast_gguf()`:
  * GGUFReader is parsed once per file and shared by the three calls, with array fields read in bulk
    (fast_reader_class), and the metadata-only result (config and tokenizer) is computed once and handed out
    as copies;
  * gguf-py's tensor name map is built once per (architecture, layer count);
  * quantized tensors are dequantized by sealgguf's C++ engine (bit-identical to ggml, multithreaded),
    where gguf-py would run numpy; types the engine lacks still go to gguf-py.
  * the weights go through transformers' own tensor loop (its tensor processor and name map), run by
    load_tensors on the metadata already parsed, casting each tensor to the requested dtype as it is
    produced, so at most one tensor exists in float32 at a time (transformers would hold two: it copies
    each dequantized array before the cast); in bf16, quantized tensors are dequantized straight to bfloat16
    where the architecture's processor only moves values around (bit_safe_processors), so none does.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from typing import Iterator

import numpy as np


def fast_reader_class():
    """gguf-py's GGUFReader with array fields read in bulk. GGUFReader makes one np.memmap slice per array element
    (the slow part: ~10 us each, 786k of them for Gemma 3's vocabulary arrays); this subclass gives the same
    fields, with each element of a number array a 1-element slice of one plain ndarray view, and each string a
    memoryview of its bytes (`bytes()`, `.tobytes()` and `.nbytes` work as on gguf-py's arrays). Everything
    else, tensors included, is gguf-py's own code."""
    import gguf

    class FastGGUFReader(gguf.GGUFReader):
        def _get_field_parts(self, orig_offs: int, raw_type: int):
            if raw_type != gguf.GGUFValueType.ARRAY or self.byte_order != "I":
                return super()._get_field_parts(orig_offs, raw_type)
            itype, alen = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
            sub, n, offs = gguf.GGUFValueType(int(itype[0])), int(alen[0]), orig_offs + 12
            parts: list = [itype, alen]
            if sub == gguf.GGUFValueType.STRING:
                buf = memoryview(self.data)
                idxs = []
                for _ in range(n):
                    size = int.from_bytes(buf[offs:offs + 8], "little")
                    parts += (buf[offs:offs + 8].cast("Q"), buf[offs + 8:offs + 8 + size])
                    idxs.append(len(parts) - 1)
                    offs += 8 + size
                if offs > len(buf):
                    raise ValueError(f"string array at offset {orig_offs} runs past the end of the file")
            elif sub in self.gguf_scalar_to_np:
                values = self._get(offs, self.gguf_scalar_to_np[sub], n).view(np.ndarray)
                if len(values) != n:
                    raise ValueError(f"array at offset {orig_offs} runs past the end of the file")
                parts += (values[i:i + 1] for i in range(n))
                idxs = list(range(2, 2 + n))
                offs += values.nbytes
            else:  # arrays of arrays: gguf-py's own walk
                return super()._get_field_parts(orig_offs, raw_type)
            return offs - orig_offs, parts, idxs, [gguf.GGUFValueType.ARRAY] + ([sub] if n else [])

    return FastGGUFReader


@contextlib.contextmanager
def fast_gguf() -> Iterator[None]:
    import gguf

    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    original_reader, original_dequantize = gguf.GGUFReader, gguf.dequantize
    original_name_map, original_checkpoint = gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint

    fast_reader = fast_reader_class()

    @functools.cache
    def reader(path: str, mtime_ns: int):
        return fast_reader(path)

    def cached_reader(path, mode="r"):
        if mode != "r":
            return original_reader(path, mode)
        return reader(os.fspath(path), os.stat(path).st_mtime_ns)

    def dequantize(data: np.ndarray, qtype) -> np.ndarray:
        if not engine_handles(qtype):
            return original_dequantize(data, qtype)
        return engine_dequantize(data, qtype)

    @functools.cache
    def metadata(path: str, mtime_ns: int) -> dict:
        return original_checkpoint(path, return_tensors=False)

    def load_checkpoint(path, return_tensors=False, model_to_load=None, torch_dtype=None):
        key = (os.fspath(path), os.stat(path).st_mtime_ns)
        parsed = fresh_copy(metadata(*key))  # callers pop from it
        if not return_tensors:
            return parsed
        if model_to_load is None:
            return original_checkpoint(path, return_tensors=True, torch_dtype=torch_dtype)
        parsed["tensors"] = load_tensors(reader(*key), parsed, model_to_load, torch_dtype)
        return parsed

    original_parse = hf_gguf._gguf_parse_value
    gguf.GGUFReader, gguf.dequantize = cached_reader, dequantize
    gguf.get_tensor_name_map = functools.cache(original_name_map)
    hf_gguf.load_gguf_checkpoint, hf_gguf._gguf_parse_value = load_checkpoint, parse_value_function(original_parse)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.dequantize = original_reader, original_dequantize
        gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint = original_name_map, original_checkpoint
        hf_gguf._gguf_parse_value = original_parse


def load_tensors(reader, parsed: dict, model, torch_dtype) -> dict:
    """The tensor loop of transformers' load_gguf_checkpoint(return_tensors=True), on the metadata it already
    parsed once: transformers' own tensor processor (Q/K permutation and the like) and name map, with each
    array cast to `torch_dtype` as it is produced. transformers re-parses every metadata field for this call
    and copies each dequantized float32 array before casting it (np.copy); the engine's arrays are fresh and
    writable, so they are wrapped as they are and the float32 array is freed once cast."""
    import gguf
    import torch

    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    field = reader.fields["general.architecture"]
    architecture = hf_gguf._gguf_parse_value(field.parts[field.data[0]], field.types)
    processor = hf_gguf.TENSOR_PROCESSORS.get(architecture, hf_gguf.TensorProcessor)(config=parsed["config"])
    names = hf_gguf.get_gguf_hf_weights_map(model, processor)
    # bf16 straight from the blocks (no float32 copy of a tensor) where the processor only moves values around
    direct = torch_dtype == torch.bfloat16 and type(processor) in bit_safe_processors()
    tensors: dict = {}
    parsed["tensors"] = tensors  # processors may read or add to it
    for t in reader.tensors:
        as_bf16 = direct and "norm" not in t.name and engine_handles(t.tensor_type)
        values = engine_dequantize(t.data, t.tensor_type, bf16=True) if as_bf16 else gguf.dequantize(t.data,
                                                                                                     t.tensor_type)
        result = processor.process(weights=values, name=t.name, tensor_key_mapping=names, parsed_parameters=parsed)
        if result.name not in names:
            continue
        weights = result.weights
        if not (weights.flags.writeable and weights.flags.c_contiguous):  # a view of the file, or a permutation
            weights = np.array(weights)
        tensor = torch.from_numpy(weights)
        if as_bf16:
            tensors[names[result.name]] = tensor.view(torch.bfloat16)
        else:
            tensors[names[result.name]] = tensor.to(torch_dtype) if torch_dtype is not None else tensor
    return tensors


def bit_safe_processors() -> set[type]:
    """transformers' tensor processors that only reshape, permute or rename the quantized weights (Gemma's
    subtracts 1 from the norm weights, which stay float32 and are never read as bits): they may be handed bf16
    bit patterns. The others (MoE splits, Mamba's exp, ...) get float32 as transformers gives them."""
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    return {hf_gguf.TensorProcessor, hf_gguf.LlamaTensorProcessor, hf_gguf.Gemma2TensorProcessor}


def engine_handles(qtype) -> bool:
    """Does the C++ engine dequantize this type? (The quantized ones; F32 and F16 stay gguf-py's views.)"""
    import gguf

    from sealgguf import _core

    return qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) and _core.supported(int(qtype))


def engine_dequantize(data: np.ndarray, qtype, bf16: bool = False) -> np.ndarray:
    """A quantized tensor (gguf-py's [..., bytes per row] view) through the C++ engine, in gguf-py's shape:
    float32, or with bf16 its bfloat16 bits (int16, as numpy has no bfloat16; torch views them)."""
    import gguf

    from sealgguf import _core

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_per_row = data.shape[-1] // size * block
    flat = np.ascontiguousarray(data).reshape(-1)
    rows = (_core.dequantize_bf16(flat, int(qtype), n_per_row).view(np.int16) if bf16
            else _core.dequantize(flat, int(qtype), n_per_row))
    return rows.reshape(*data.shape[:-1], n_per_row)


def fresh_copy(value):
    """A copy of parsed GGUF metadata that callers may pop from and mutate: new dicts and lists all the way
    down; the leaves (str, int, float, bool) are immutable and shared. copy.deepcopy gives the same, ~50x
    slower on a 262k-entry vocabulary (it memoizes every element)."""
    if isinstance(value, dict):
        return {k: fresh_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        if all(isinstance(v, (str, int, float, bool)) for v in value):
            return value.copy()
        return [fresh_copy(v) for v in value]
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return copy.deepcopy(value)


def parse_value_function(original):
    """transformers' _gguf_parse_value (one element of a GGUF field -> a Python value) with a short path for
    the elements of FastGGUFReader's arrays; anything else goes to transformers' own function."""
    import gguf

    ints = {int(t) for t in (gguf.GGUFValueType.UINT8, gguf.GGUFValueType.INT8, gguf.GGUFValueType.UINT16,
                             gguf.GGUFValueType.INT16, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.INT32,
                             gguf.GGUFValueType.UINT64, gguf.GGUFValueType.INT64)}
    floats = {int(gguf.GGUFValueType.FLOAT32), int(gguf.GGUFValueType.FLOAT64)}
    string, array = int(gguf.GGUFValueType.STRING), int(gguf.GGUFValueType.ARRAY)

    def parse(value, types):
        if isinstance(types, list) and len(types) == 2 and types[0] == array:
            if types[1] == string and isinstance(value, memoryview):
                return bytes(value).decode()
            if types[1] in ints:
                return int(value[0])
            if types[1] in floats:
                return float(value[0])
        return original(value, types)

    return parse
