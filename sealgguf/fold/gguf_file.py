"""Read a GGUF file's header fast, and what sealgguf needs from it: the attention layout.

gguf-py's GGUFReader builds a numpy view for every element of every metadata array (524k views
for Gemma 3's vocabulary: ~10 s). sealgguf only needs scalar keys, the tensor table and the byte
range of each record, so this scanner walks the header once, skips array payloads by their
lengths, and decodes a value only when it is asked for. Type codes and block sizes come from
gguf-py (`gguf.GGUFValueType`, `gguf.GGML_QUANT_SIZES`).
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sealgguf.errors import SealError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
ATTN_OUTPUT = re.compile(r"^blk\.(\d+)\.attn_output\.weight$")
# A tensor-info record is at least 8 (name length) + 1 + 4 (n_dims) + 8 + 4 (type) + 8 (offset) bytes,
# a key-value pair at least 8 + 1 + 4 + 1; counts beyond what the file could hold are forged.
MIN_TENSOR_INFO_BYTES, MIN_KV_BYTES = 33, 14
MAX_DIMS = 4

# GGUFValueType -> struct format of a scalar
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
STRING, ARRAY = 8, 9


class _Truncated(Exception):
    pass


@dataclass
class Field:
    name: str
    vtype: int            # gguf.GGUFValueType value
    sub_type: int | None  # element type of an array
    start: int            # byte range of the whole key-value record in the file
    end: int
    value_start: int      # where the value (after the type code) begins


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]   # ggml order: shape[0] (ne0) is the row length
    type_id: int
    offset: int              # relative to the data section
    n_bytes: int


class GGUFFile:
    """A read-only, memory-mapped GGUF file: fields and tensor table parsed, values decoded lazily."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SealError(f"{self.path}: no such GGUF file")
        self.size = self.path.stat().st_size
        if self.size < 24:
            raise SealError(f"{self.path}: file is {self.size} bytes, too short for a GGUF header")
        with open(self.path, "rb") as f:
            self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse()
        except _Truncated:
            raise SealError(f"{self.path}: truncated GGUF (header runs past the end of the file)") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise SealError(f"{self.path}: corrupt GGUF header ({e})") from None

    # -- low-level reads -------------------------------------------------------------------
    def _read(self, fmt: str, pos: int) -> tuple[Any, int]:
        n = struct.calcsize(fmt)
        if pos + n > self.size:
            raise _Truncated()
        return struct.unpack_from(fmt, self.buf, pos)[0], pos + n

    def _string(self, pos: int) -> tuple[str, int]:
        n, pos = self._read("<Q", pos)
        if pos + n > self.size:
            raise _Truncated()
        return bytes(self.buf[pos:pos + n]).decode("utf-8"), pos + n

    def _skip_value(self, vtype: int, pos: int) -> int:
        if vtype in _SCALAR:
            return pos + struct.calcsize(_SCALAR[vtype])
        if vtype == STRING:
            n, pos = self._read("<Q", pos)
            return pos + n
        if vtype == ARRAY:
            sub, pos = self._read("<I", pos)
            count, pos = self._read("<Q", pos)
            if sub in _SCALAR:
                return pos + count * struct.calcsize(_SCALAR[sub])
            if count * 8 > self.size:
                raise ValueError(f"array of {count} elements cannot fit in the file")
            for _ in range(count):
                pos = self._skip_value(sub, pos)
                if pos > self.size:
                    raise _Truncated()
            return pos
        raise ValueError(f"unknown metadata value type {vtype}")

    def _parse(self) -> None:
        p = self.path
        if self.buf[:4] != GGUF_MAGIC:
            raise SealError(f"{p}: not a GGUF file (magic is {bytes(self.buf[:4])!r}, expected b'GGUF')")
        self.version, n_tensors, n_kv = struct.unpack_from("<IQQ", self.buf, 4)
        if self.version not in (2, 3):
            raise SealError(f"{p}: unsupported GGUF version {self.version} (expected 2 or 3)")
        if n_tensors * MIN_TENSOR_INFO_BYTES > self.size:
            raise SealError(f"{p}: header claims {n_tensors} tensors, more than a {self.size}-byte file can hold (truncated or forged)")
        if n_kv * MIN_KV_BYTES > self.size:
            raise SealError(f"{p}: header claims {n_kv} metadata keys, more than a {self.size}-byte file can hold (truncated or forged)")
        pos = 24
        self.fields: dict[str, Field] = {}
        for _ in range(n_kv):
            start = pos
            name, pos = self._string(pos)
            vtype, pos = self._read("<I", pos)
            sub = struct.unpack_from("<I", self.buf, pos)[0] if vtype == ARRAY and pos + 4 <= self.size else None
            end = self._skip_value(vtype, pos)
            if end > self.size:
                raise _Truncated()
            self.fields[name] = Field(name, vtype, sub, start, end, pos)
            pos = end
        self.kv_end = pos
        self.alignment = int(self.value("general.alignment", DEFAULT_ALIGNMENT))
        if self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise SealError(f"{p}: general.alignment {self.alignment} is not a power of two")

        import gguf

        self.tensors: list[TensorInfo] = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            n_dims, pos = self._read("<I", pos)
            if not 1 <= n_dims <= MAX_DIMS:
                raise SealError(f"{p}: tensor {name} has {n_dims} dimensions")
            shape = struct.unpack_from(f"<{n_dims}Q", self.buf, pos) if pos + 8 * n_dims <= self.size else None
            if shape is None:
                raise _Truncated()
            pos += 8 * n_dims
            type_id, pos = self._read("<I", pos)
            offset, pos = self._read("<Q", pos)
            try:
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
            except (ValueError, KeyError):
                raise SealError(f"{p}: tensor {name} has unknown ggml type {type_id}") from None
            n_el = int(np.prod(shape, dtype=np.uint64)) if shape else 0
            if shape[0] % block:
                raise SealError(f"{p}: tensor {name}: row of {shape[0]} values is not a whole number of blocks")
            self.tensors.append(TensorInfo(name, tuple(int(s) for s in shape), type_id, offset,
                                           n_el // block * type_size))
        self.ti_end = pos
        self.data_offset = -(-pos // self.alignment) * self.alignment
        for t in self.tensors:
            if self.data_offset + t.offset + t.n_bytes > self.size:
                raise SealError(f"{p}: tensor {t.name} runs past the end of the file (truncated?)")

    # -- values ----------------------------------------------------------------------------
    def _decode(self, vtype: int, pos: int) -> tuple[Any, int]:
        if vtype in _SCALAR:
            return self._read(_SCALAR[vtype], pos)
        if vtype == STRING:
            return self._string(pos)
        sub, pos = self._read("<I", pos)
        count, pos = self._read("<Q", pos)
        if sub in _SCALAR:
            arr = np.frombuffer(self.buf, dtype=_NUMPY[sub], count=count, offset=pos)
            return arr.tolist(), pos + arr.nbytes
        out = []
        for _ in range(count):
            v, pos = self._decode(sub, pos)
            out.append(v)
        return out, pos

    def value(self, key: str, default: Any = None) -> Any:
        f = self.fields.get(key)
        if f is None:
            return default
        return self._decode(f.vtype, f.value_start)[0]

    def raw(self, start: int, end: int) -> memoryview:
        return memoryview(self.buf)[start:end]

    def tensor_data(self, t: TensorInfo) -> np.ndarray:
        start = self.data_offset + t.offset
        return np.frombuffer(self.buf, dtype=np.uint8, count=t.n_bytes, offset=start)

    def type_name(self, t: TensorInfo) -> str:
        import gguf

        return gguf.GGMLQuantizationType(t.type_id).name


def open_gguf(path: str | Path) -> GGUFFile:
    """Open `path` as a GGUF file, or raise SealError naming what is wrong."""
    return GGUFFile(path)


def field_value(reader: GGUFFile, key: str, default=None):
    """The Python value of metadata key `key` (str, number, or list), or `default`."""
    return reader.value(key, default)


@dataclass(frozen=True)
class AttentionLayout:
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int  # width of one query head's output, i.e. attn_output input columns per head
    context_length: int
    attn_output_types: dict[str, int]  # ggml type name -> number of layers

    @property
    def n_cols(self) -> int:
        return self.n_head * self.head_dim


def read_layout(reader: GGUFFile, path: str | Path) -> AttentionLayout:
    arch = reader.value("general.architecture")
    if not isinstance(arch, str):
        raise SealError(f"{path}: metadata key general.architecture is missing")

    def need_int(key: str) -> int:
        v = reader.value(f"{arch}.{key}")
        if isinstance(v, list):  # per-layer arrays: SEAL needs one layout for all layers
            if len(set(v)) != 1:
                raise SealError(f"{path}: {arch}.{key} differs between layers ({v[:4]}...); not supported")
            v = v[0]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise SealError(f"{path}: metadata key {arch}.{key} is missing or not a positive integer")
        return v

    n_layer = need_int("block_count")
    n_head = need_int("attention.head_count")
    n_head_kv = int(reader.value(f"{arch}.attention.head_count_kv", n_head) or n_head)
    n_embd = need_int("embedding_length")
    head_dim = reader.value(f"{arch}.attention.value_length") or reader.value(
        f"{arch}.attention.key_length") or n_embd // n_head
    context_length = int(reader.value(f"{arch}.context_length", 0) or 0)

    types: dict[str, int] = {}
    found = 0
    for t in reader.tensors:
        if not ATTN_OUTPUT.match(t.name):
            continue
        found += 1
        if t.shape[0] != n_head * int(head_dim):
            raise SealError(f"{path}: tensor {t.name} has {t.shape[0]} input columns, expected n_head * head_dim "
                            f"= {n_head} * {head_dim}")
        name = reader.type_name(t)
        types[name] = types.get(name, 0) + 1
    if found != n_layer:
        raise SealError(f"{path}: found {found} blk.N.attn_output.weight tensors, expected {n_layer}")
    return AttentionLayout(arch, n_layer, n_head, n_head_kv, int(head_dim), context_length, types)
