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

from sealgguf.errors import EnvironmentProblem, SealError
from sealgguf.layout import AttentionLayout

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
ATTN_OUTPUT = re.compile(r"^blk\.(\d+)\.attn_output\.weight$")
ATTN_V = re.compile(r"^blk\.(\d+)\.attn_v\.(weight|bias)$")      # value projection (+ bias)
ATTN_QKV = re.compile(r"^blk\.(\d+)\.attn_qkv\.(weight|bias)$")  # fused Q, K, V rows (phi3, ...)
LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")
# A tensor-info record is at least 8 (name length) + 1 + 4 (n_dims) + 8 + 4 (type) + 8 (offset) bytes,
# a key-value pair at least 8 + 1 + 4 + 1; counts beyond what the file could hold are forged.
MIN_TENSOR_INFO_BYTES, MIN_KV_BYTES = 33, 14
# Limits from llama.cpp's loader (ggml/src/gguf.cpp, ggml.h).
MAX_DIMS = 4                 # GGML_MAX_DIMS
MAX_NAME = 64                # GGML_MAX_NAME, terminating zero included
MAX_STRING = MAX_ARRAY = 1 << 30
INT64_MAX = (1 << 63) - 1

# GGUFValueType -> struct format of a scalar
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
UINT32, INT32, FLOAT32, STRING, ARRAY = 4, 5, 6, 8, 9
_TYPE_NAMES = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 8: "string",
               9: "array", 10: "u64", 11: "i64", 12: "f64"}


def array_end(buf, pos: int, sub: int, count: int) -> int:
    """Where an array of `count` values of GGUF scalar or string type `sub` starting at byte `pos` of `buf` ends;
    -1 where it would run past the end of `buf`. Strings (a vocabulary has ~10^5) are walked in C++."""
    if sub in _SCALAR:
        end = pos + count * struct.calcsize(_SCALAR[sub])
        return end if end <= len(buf) else -1
    if sub != STRING:
        raise ValueError(f"GGUF type {sub} is not a scalar or string type")
    if pos + count * 8 > len(buf):
        return -1
    from sealgguf import _core

    return _core.string_array_end(buf, pos, count)


# Keys llama.cpp reads with one fixed type (its model loader refuses any other); "{arch}" is the
# architecture. A per-layer key may also be an array of i32/u32 with one entry per layer.
KEY_TYPES: dict[str, int] = {
    "general.alignment": UINT32,
    "general.architecture": STRING,
    "{arch}.context_length": UINT32,
    "{arch}.block_count": UINT32,
    "{arch}.embedding_length": UINT32,
    "{arch}.attention.head_count": UINT32,
    "{arch}.attention.head_count_kv": UINT32,
    "{arch}.attention.key_length": UINT32,
    "{arch}.attention.value_length": UINT32,
    "{arch}.rope.freq_base": FLOAT32,
    "{arch}.rope.scaling.type": STRING,
    "{arch}.rope.scaling.factor": FLOAT32,
    "{arch}.rope.scaling.original_context_length": UINT32,
}
PER_LAYER_KEYS = ("{arch}.attention.head_count", "{arch}.attention.head_count_kv")


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

    @property
    def type_name(self) -> str:
        t = _TYPE_NAMES.get(self.vtype, str(self.vtype))
        return f"array of {_TYPE_NAMES.get(self.sub_type, str(self.sub_type))}" if self.vtype == ARRAY else t


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]   # ggml order: shape[0] (ne0) is the row length
    type_id: int
    offset: int              # relative to the data section
    n_bytes: int


class GGUFFile:
    """A read-only, memory-mapped GGUF file: header validated, fields and tensor table parsed, values
    decoded lazily.

    Validation refuses what llama.cpp's loader (ggml/src/gguf.cpp) refuses, with the key or tensor
    named: bad magic or version, duplicate or empty keys, unknown value types, arrays of arrays,
    strings and arrays past the end of the file, general.alignment not a u32 power of two, duplicate,
    empty or over-long tensor names, more than 4 dimensions, element counts that overflow int64,
    unknown ggml types, rows that are not whole blocks, and tensor data not laid out in table order at
    aligned offsets inside the file (so no two tensors can overlap). It also refuses zero dimensions.
    Key types llama.cpp fixes (KEY_TYPES) are checked by the typed getters and by `read_layout`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise EnvironmentProblem(f"{self.path}: no such GGUF file")
        if not self.path.is_file():
            raise SealError(f"{self.path}: not a regular file")
        self.size = self.path.stat().st_size
        if self.size < 24:
            raise SealError(f"{self.path}: file is {self.size} bytes, too short for a GGUF header")
        try:
            with open(self.path, "rb") as f:
                self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except PermissionError:
            raise EnvironmentProblem(f"{self.path}: permission denied") from None
        try:
            self._parse()
        except _Truncated:
            raise SealError(f"{self.path}: truncated GGUF (header runs past the end of the file)") from None
        except UnicodeDecodeError:
            raise SealError(f"{self.path}: corrupt GGUF header (a key, tensor name or string is not UTF-8)") from None

    def _fail(self, what: str) -> SealError:
        return SealError(f"{self.path}: {what}")

    # -- low-level reads -------------------------------------------------------------------
    def _read(self, fmt: str, pos: int) -> tuple[Any, int]:
        n = struct.calcsize(fmt)
        if pos + n > self.size:
            raise _Truncated()
        return struct.unpack_from(fmt, self.buf, pos)[0], pos + n

    def _string(self, pos: int) -> tuple[str, int]:
        n, pos = self._read("<Q", pos)
        if n > MAX_STRING or pos + n > self.size:
            raise _Truncated()
        return bytes(self.buf[pos:pos + n]).decode("utf-8"), pos + n

    def _skip_value(self, key: str, vtype: int, pos: int) -> int:
        if vtype in _SCALAR:
            return pos + struct.calcsize(_SCALAR[vtype])
        if vtype == STRING:
            n, pos = self._read("<Q", pos)
            if n > MAX_STRING:
                raise self._fail(f"key '{key}': string of {n} bytes exceeds llama.cpp's limit")
            return pos + n
        if vtype == ARRAY:
            sub, pos = self._read("<I", pos)
            count, pos = self._read("<Q", pos)
            if sub == ARRAY:
                raise self._fail(f"key '{key}' is an array of arrays (llama.cpp does not accept nested arrays)")
            if sub not in _SCALAR and sub != STRING:
                raise self._fail(f"key '{key}' is an array of invalid GGUF type {sub}")
            if count > MAX_ARRAY:
                raise self._fail(f"key '{key}': array of {count} elements exceeds llama.cpp's limit")
            end = array_end(self.buf, pos, sub, count)
            if end < 0:
                raise _Truncated()
            return end
        raise self._fail(f"key '{key}' has invalid GGUF type {vtype}")

    def _parse(self) -> None:
        if self.buf[:4] != GGUF_MAGIC:
            raise self._fail(f"not a GGUF file (magic is {bytes(self.buf[:4])!r}, expected b'GGUF')")
        self.version, n_tensors, n_kv = struct.unpack_from("<IQQ", self.buf, 4)
        if self.version not in (2, 3):
            raise self._fail(f"unsupported GGUF version {self.version} (expected 2 or 3)")
        if n_tensors * MIN_TENSOR_INFO_BYTES > self.size:
            raise self._fail(f"header claims {n_tensors} tensors, more than a {self.size}-byte file can hold "
                             "(truncated or forged)")
        if n_kv * MIN_KV_BYTES > self.size:
            raise self._fail(f"header claims {n_kv} metadata keys, more than a {self.size}-byte file can hold "
                             "(truncated or forged)")
        pos = 24
        self.fields: dict[str, Field] = {}
        for i in range(n_kv):
            start = pos
            name, pos = self._string(pos)
            if not name:
                raise self._fail(f"metadata key {i} is empty")
            if name in self.fields:
                raise self._fail(f"duplicate metadata key '{name}'")
            vtype, pos = self._read("<I", pos)
            sub = self._read("<I", pos)[0] if vtype == ARRAY else None
            end = self._skip_value(name, vtype, pos)
            if end > self.size:
                raise _Truncated()
            self.fields[name] = Field(name, vtype, sub, start, end, pos)
            pos = end
        self.kv_end = pos
        arch = self.fields.get("general.architecture")
        self.arch: str | None = self.value(arch.name) if arch is not None and arch.vtype == STRING else None
        self.alignment = self.get("general.alignment", DEFAULT_ALIGNMENT)
        if self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise self._fail(f"general.alignment {self.alignment} is not a power of two")

        import gguf

        self.tensors: list[TensorInfo] = []
        names: set[str] = set()
        for i in range(n_tensors):
            name, pos = self._string(pos)
            if not name or len(name.encode("utf-8")) >= MAX_NAME:
                raise self._fail(f"tensor {i} has a name of {len(name)} characters (must be 1..{MAX_NAME - 1} bytes)")
            if name in names:
                raise self._fail(f"duplicate tensor name '{name}'")
            names.add(name)
            n_dims, pos = self._read("<I", pos)
            if not 1 <= n_dims <= MAX_DIMS:
                raise self._fail(f"tensor '{name}' has {n_dims} dimensions (must be 1..{MAX_DIMS})")
            if pos + 8 * n_dims > self.size:
                raise _Truncated()
            shape = struct.unpack_from(f"<{n_dims}Q", self.buf, pos)
            pos += 8 * n_dims
            n_el = 1
            for d in shape:
                if not 1 <= d <= INT64_MAX:
                    raise self._fail(f"tensor '{name}' has a dimension of {d} (must be 1..2^63-1)")
                n_el *= d
                if n_el > INT64_MAX:
                    raise self._fail(f"tensor '{name}' shape {list(shape)} overflows int64 elements")
            type_id, pos = self._read("<I", pos)
            offset, pos = self._read("<Q", pos)
            try:
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
            except (ValueError, KeyError):
                raise self._fail(f"tensor '{name}' has unknown ggml type {type_id}") from None
            if shape[0] % block:
                raise self._fail(f"tensor '{name}': row of {shape[0]} values is not a whole number of "
                                 f"{block}-value blocks")
            self.tensors.append(TensorInfo(name, tuple(int(s) for s in shape), type_id, offset,
                                           n_el // block * type_size))
        self.ti_end = pos
        self.data_offset = -(-pos // self.alignment) * self.alignment
        # llama.cpp's rule: tensor data in table order, each at the aligned end of the one before.
        expected = 0
        for t in self.tensors:
            if t.offset != expected:
                raise self._fail(f"tensor '{t.name}' has data offset {t.offset}, expected {expected} (tensor data "
                                 "must follow the table order at aligned offsets; overlapping or forged table)")
            if self.data_offset + t.offset + t.n_bytes > self.size:
                raise self._fail(f"tensor '{t.name}' runs past the end of the file (truncated?)")
            expected += -(-t.n_bytes // self.alignment) * self.alignment

    # -- typed values ----------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, checked against the type llama.cpp requires when KEY_TYPES names it
        (with "{arch}" for this file's architecture)."""
        f = self.fields.get(key)
        if f is None:
            return default
        rule = key if key in KEY_TYPES else (
            "{arch}" + key[len(self.arch):] if self.arch and key.startswith(self.arch + ".") else None)
        want = KEY_TYPES.get(rule)
        if want is not None:
            per_layer = rule in PER_LAYER_KEYS
            if f.vtype == ARRAY and per_layer and f.sub_type in (INT32, UINT32):
                return self.value(key)
            if f.vtype != want:
                also = " or an array of i32/u32" if per_layer else ""
                raise self._fail(f"metadata key '{key}' has type {f.type_name}, expected {_TYPE_NAMES[want]}{also}")
        v = self.value(key)
        if isinstance(v, float) and not np.isfinite(v):
            raise self._fail(f"metadata key '{key}' is {v}, not a finite number")
        return v

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
        try:
            return self._decode(f.vtype, f.value_start)[0]
        except UnicodeDecodeError:
            raise self._fail(f"metadata key '{key}' holds a string that is not UTF-8") from None

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
    """The value of metadata key `key` (str, number, or list), type-checked, or `default`."""
    return reader.get(key, default)


def read_layout(reader: GGUFFile, path: str | Path | None = None) -> AttentionLayout:
    """The attention layout from a GGUF's metadata, every key type- and range-checked, every
    `blk.N.` tensor within the block count, one attn_output per layer with n_head * head_dim columns."""
    path = path or reader.path
    arch = reader.get("general.architecture")
    if not arch:
        raise SealError(f"{path}: metadata key general.architecture is missing")

    def positive(key: str, default: int | None = None) -> int:
        v = reader.get(f"{arch}.{key}")
        if v is None and default is not None:
            return default
        if isinstance(v, list):  # per-layer arrays: SEAL needs one layout for all layers
            if not v or len(set(v)) != 1:
                raise SealError(f"{path}: metadata key {arch}.{key} differs between layers ({v[:4]}...); "
                                "not supported")
            v = v[0]
        if v is None or v <= 0:
            raise SealError(f"{path}: metadata key {arch}.{key} is missing or not a positive integer")
        return int(v)

    n_layer = positive("block_count")
    n_head = positive("attention.head_count")
    n_head_kv = positive("attention.head_count_kv", n_head)
    if n_head % n_head_kv:
        raise SealError(f"{path}: {arch}.attention.head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    n_embd = positive("embedding_length")
    head_dim = positive("attention.value_length", 0) or positive("attention.key_length", 0) or n_embd // n_head
    if head_dim <= 0:
        raise SealError(f"{path}: head_dim is 0 ({arch}.embedding_length {n_embd} < head_count {n_head})")
    context_length = positive("context_length", 0)
    reader.get(f"{arch}.rope.freq_base")  # type check: llama.cpp reads it as f32

    types: dict[str, int] = {}
    found: set[int] = set()
    for t in reader.tensors:
        m = LAYER_TENSOR.match(t.name)
        if m and int(m.group(1)) >= n_layer:
            raise SealError(f"{path}: tensor {t.name} names layer {m.group(1)}, but {arch}.block_count is {n_layer}")
        if not ATTN_OUTPUT.match(t.name):
            continue
        found.add(int(m.group(1)))
        if t.shape[0] != n_head * head_dim:
            raise SealError(f"{path}: tensor {t.name} has {t.shape[0]} input columns, expected n_head * head_dim "
                            f"= {n_head} * {head_dim}")
        name = reader.type_name(t)
        types[name] = types.get(name, 0) + 1
    if len(found) != n_layer:
        raise SealError(f"{path}: found {len(found)} blk.N.attn_output.weight tensors, expected {n_layer}")
    return AttentionLayout(arch, n_layer, n_head, n_head_kv, head_dim, context_length, types)
