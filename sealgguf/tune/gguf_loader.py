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
from pathlib import Path
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


def cache_root() -> Path:
    """Where sealgguf caches derived files: $SEALGGUF_CACHE, else $XDG_CACHE_HOME/sealgguf, else ~/.cache/sealgguf."""
    if os.environ.get("SEALGGUF_CACHE"):
        return Path(os.environ["SEALGGUF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sealgguf"


def tokenizer_key(path: Path) -> str:
    """What a converted tokenizer depends on: the GGUF's metadata section (the conversion reads nothing else; unlike
    a hash of the whole file it costs milliseconds on a 70B model) and the converting libraries' versions."""
    import hashlib

    import tokenizers
    import transformers

    from sealgguf.gguf_file import GGUFFile

    header = GGUFFile(path)
    h = hashlib.sha256(bytes(header.raw(0, header.kv_end)))
    h.update(f"transformers {transformers.__version__} tokenizers {tokenizers.__version__}".encode())
    return h.hexdigest()


def load_tokenizer(path: Path):
    """transformers' tokenizer for a GGUF file. Converting the GGUF vocabulary is the slow part of loading (Gemma 3's
    262k entries), so the result is saved under cache_root()/tokenizers/KEY (tokenizer_key) and later loads read
    it back. A cache that cannot be written or read is skipped; the conversion is then done as usual."""
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    entry = cache_root() / "tokenizers" / tokenizer_key(path)
    if entry.is_dir():
        try:
            return AutoTokenizer.from_pretrained(entry)
        except Exception:  # a damaged entry: convert again and replace it
            shutil.rmtree(entry, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name[:16]}.", dir=entry.parent))
        tok.save_pretrained(tmp)
        os.replace(tmp, entry)  # atomic; fails if a concurrent writer's identical entry got there first
    except OSError:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return tok
