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
  * what transformers derives from the header (the config's metadata and the converted tokenizer) is saved
    once per header in sealgguf's cache (save_conversion); a later load of the same header takes it from
    there (load_conversion) and its reader skims the vocabulary arrays instead of building them;
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
import hashlib
import json
import mmap
import os
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Iterator

import numpy as np

from sealgguf.fsutil import atomic_output, cache_dir
from sealgguf.gguf_file import GGUFFile, array_end

# An array field this long is a vocabulary (tokens, scores, token types, merges); a skimming reader only steps over it.
SKIM_MIN_LENGTH = 4096
CONVERSION_FORMAT = 1  # of the saved conversion: part of its key, so a change here never reads an older file


def fast_reader_class(skim: bool = False):
    """gguf-py's GGUFReader with array fields read in bulk. GGUFReader makes one np.memmap slice per array element
    (the slow part: ~10 us each, 786k of them for Gemma 3's vocabulary arrays); this subclass gives the same
    fields, with each element of a number array a 1-element slice of one plain ndarray view, and each string a
    memoryview of its bytes (`bytes()`, `.tobytes()` and `.nbytes` work as on gguf-py's arrays). Everything
    else, tensors included, is gguf-py's own code. With `skim`, arrays of SKIM_MIN_LENGTH or more elements are
    stepped over and read as empty: for a load whose metadata comes from a saved conversion, which needs the
    reader only for its tensors."""
    import gguf

    class FastGGUFReader(gguf.GGUFReader):
        def _get_field_parts(self, orig_offs: int, raw_type: int):
            if raw_type != gguf.GGUFValueType.ARRAY or self.byte_order != "I":
                return super()._get_field_parts(orig_offs, raw_type)
            itype, alen = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
            sub, n, offs = gguf.GGUFValueType(int(itype[0])), int(alen[0]), orig_offs + 12
            parts: list = [itype, alen]
            if skim and n >= SKIM_MIN_LENGTH and (sub == gguf.GGUFValueType.STRING or sub in self.gguf_scalar_to_np):
                end = array_end(self.data, offs, int(sub), n)
                if end < 0:
                    raise ValueError(f"array at offset {orig_offs} runs past the end of the file")
                return end - orig_offs, parts, [], [gguf.GGUFValueType.ARRAY, sub]
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
def fast_gguf(saved: Conversion | None = None) -> Iterator[dict[str, dict]]:
    """transformers' GGUF loading, made fast (see the module docstring) while the block runs. With `saved` (a
    conversion of one file from load_conversion) that file's metadata is taken as parsed and its reader skims.
    Yields {path: metadata} of every file parsed inside the block, for save_conversion."""
    import gguf

    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    original_reader, original_dequantize = gguf.GGUFReader, gguf.dequantize
    original_name_map, original_checkpoint = gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint

    fast_reader, skimming_reader = fast_reader_class(), fast_reader_class(skim=True)
    saved_path = os.path.realpath(saved.path) if saved else None
    parsed: dict[str, dict] = {}

    def is_saved(path: str) -> bool:
        return os.path.realpath(path) == saved_path

    @functools.cache
    def reader(path: str, mtime_ns: int):
        return (skimming_reader if is_saved(path) else fast_reader)(path)

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
        if is_saved(path):
            return saved.metadata
        parsed[path] = original_checkpoint(path, return_tensors=False)
        return parsed[path]

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
        yield parsed
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
    drop_pages = page_dropper(reader.data)
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
        drop_pages(t.data_offset, t.n_bytes)  # read and copied: no tensor of the model shares the file's pages
    return tensors


def page_dropper(data: np.ndarray):
    """A function that takes a read range of a read-only np.memmap out of the process's resident set (madvise
    MADV_DONTNEED: the pages stay in the page cache, and map back in if read again), so that the file's pages do
    not count on top of the weights made from them. A no-op for other arrays and where madvise is missing."""
    mm = getattr(data, "_mmap", None)
    if mm is None or getattr(data, "mode", None) != "r" or not hasattr(mmap, "MADV_DONTNEED"):
        return lambda start, n_bytes: None
    page, size = mmap.PAGESIZE, len(mm)

    def drop(start: int, n_bytes: int) -> None:
        lo, hi = start // page * page, min(-(-(start + n_bytes) // page) * page, size)
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    return drop


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


@dataclass
class Conversion:
    """What transformers derives from a GGUF's header for the tuner, as save_conversion keeps it: the metadata of
    load_gguf_checkpoint(return_tensors=False) without the vocabulary (config, tokenizer_config, ...), and the
    tokenizer transformers converted (its `tokenizers` backend, with the special tokens the encoder needs)."""
    path: str
    metadata: dict[str, Any]
    tokenizer: Any  # tokenizers.Tokenizer
    bos_token: str | None
    bos_token_id: int | None
    chat_template: str | None

    def encode(self, text: str) -> list[int]:
        """Text -> ids, special-token text parsed, nothing added: what transformers' tokenizer(text,
        add_special_tokens=False) gives (its backend is this same tokenizer)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids


def conversion_key(src: GGUFFile) -> str:
    """Everything a conversion depends on: the header's bytes (every key and the tensor table) and the versions
    of the code that converts it."""
    h = hashlib.sha256(src.raw(0, src.data_offset))
    for package in ("transformers", "tokenizers", "gguf"):
        h.update(f"|{package} {version(package)}".encode())
    h.update(f"|format {CONVERSION_FORMAT}".encode())
    return h.hexdigest()


def _conversion_files(src: GGUFFile) -> tuple[str, str]:
    base = cache_dir("conversions", conversion_key(src))
    return f"{base}.json", f"{base}.tokenizer.json"


def load_conversion(src: GGUFFile) -> Conversion | None:
    """The saved conversion of this header, or None (never saved, or unreadable: then it is converted again)."""
    import tokenizers

    info_file, tokenizer_file = _conversion_files(src)
    try:
        with open(info_file, encoding="utf-8") as f:
            info = json.load(f)
        tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return Conversion(str(src.path), info["metadata"], tokenizer, info["bos_token"], info["bos_token_id"],
                          info["chat_template"])
    except Exception:  # a cache: a missing, stale or damaged entry is converted again and rewritten
        return None


def save_conversion(src: GGUFFile, metadata: dict, tok) -> None:
    """Keep this load's conversion (its metadata from fast_gguf, and the transformers tokenizer `tok`) for the
    next load of the same header. Skipped where the metadata does not survive JSON unchanged, or the cache
    cannot be written: the load itself never depends on it."""
    kept = {k: v for k, v in metadata.items() if k != "tokenizer"}  # the vocabulary: the tokenizer holds it
    info = {"metadata": kept, "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
            "chat_template": getattr(tok, "chat_template", None)}
    try:
        text = json.dumps(info)
        if json.loads(text) != info:
            return
        info_file, tokenizer_file = _conversion_files(src)
        with atomic_output(tokenizer_file) as tmp:
            tok.backend_tokenizer.save(str(tmp), pretty=False)
        with atomic_output(info_file) as tmp:  # last: an entry is complete once this exists
            tmp.write_text(text, encoding="utf-8")
    except (OSError, TypeError, ValueError):
        return
