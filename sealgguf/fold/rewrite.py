"""Write a sealed GGUF: every key and tensor of the input, with SEAL scales folded into
blk.N.attn_output.weight in the tensor's own quant type.

Folding never changes a tensor's size, so the tensor table and every tensor offset stay valid.
The output is the input's header with seal.* keys added, its tensor table copied byte for byte,
and its data section copied in-kernel (copy_file_range) with the folded tensors written in place.
The SHA-256 of the input is computed in a thread while the rest runs; its 64 hex characters are
written into a placeholder in the header at the end (the value has a fixed length).
Memory stays O(largest folded tensor); the output appears only when complete (temporary file +
rename); inputs are opened read-only.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sealgguf import __version__
from sealgguf.errors import SealError
from sealgguf.fold.gguf_file import ATTN_OUTPUT, STRING, _SCALAR, AttentionLayout, GGUFFile, TensorInfo, read_layout
from sealgguf.fold.rope import rope_overrides
from sealgguf.fsutil import atomic_output, sha256_file
from sealgguf.scales import Scales, load as load_scales

FOLDABLE = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K"


@dataclass
class FoldResult:
    out_path: Path
    granularity: str
    layout: AttentionLayout
    tensors: dict[str, dict] = field(default_factory=dict)  # name -> fold statistics

    def rel_rmse_by_type(self) -> dict[str, float]:
        worst: dict[str, float] = {}
        for s in self.tensors.values():
            worst[s["type"]] = max(worst.get(s["type"], 0.0), s["rel_rmse"])
        return worst

    def blocks(self, kind: str) -> int:
        return sum(int(s[kind]) for s in self.tensors.values())


def exact_per_head(layout: AttentionLayout) -> dict[str, bool]:
    """For each attn_output type: does a per-head scale cover whole blocks (no requantization)?"""
    import gguf

    return {name: layout.head_dim % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]][0] == 0
            for name in layout.attn_output_types}


def pack_kv(key: str, value, vtype: int) -> bytes:
    """One GGUF key-value record (scalar or string value)."""
    kb = key.encode("utf-8")
    out = struct.pack("<Q", len(kb)) + kb + struct.pack("<I", int(vtype))
    if vtype == STRING:
        vb = str(value).encode("utf-8")
        return out + struct.pack("<Q", len(vb)) + vb
    return out + struct.pack(_SCALAR[int(vtype)], value)


def fold_tensor(src: GGUFFile, t: TensorInfo, scales: Scales, layout: AttentionLayout,
                threads: int) -> tuple[np.ndarray, dict]:
    from sealgguf import _core

    layer = int(ATTN_OUTPUT.match(t.name).group(1))
    if not _core.supported(t.type_id):
        raise SealError(f"{src.path}: tensor {t.name}: cannot fold type {src.type_name(t)} (supported: {FOLDABLE})")
    new, stats = _core.fold(src.tensor_data(t), t.type_id, layout.n_cols,
                            scales.column_scales(layer, layout.head_dim), threads)
    stats["type"] = src.type_name(t)
    return new.reshape(-1), stats


def _copy_range(fin: int, fout: int, start: int, end: int) -> None:
    """Append bytes [start, end) of fin to fout, in the kernel where the OS allows."""
    while start < end:
        try:
            n = os.copy_file_range(fin, fout, end - start, start)
        except OSError:
            n = 0
        if n <= 0:  # cross-device or unsupported: fall back to read/write
            chunk = os.pread(fin, min(end - start, 16 << 20), start)
            n = os.write(fout, chunk)
        start += n


def fold_file(model: str | os.PathLike, scales_path: str | os.PathLike, out: str | os.PathLike,
              threads: int = 0, progress: bool = False) -> FoldResult:
    model, out = Path(model), Path(out)
    if out.exists() and out.resolve() == model.resolve():
        raise SealError(f"{out}: output would overwrite the input model; choose another -o path")
    pool = ThreadPoolExecutor(max_workers=1)
    source_hash = pool.submit(sha256_file, model)  # hashlib releases the GIL: runs beside the work below
    try:
        return _fold_file(model, scales_path, out, threads, progress, source_hash)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


HASH_PLACEHOLDER = "0" * 64


def _fold_file(model: Path, scales_path, out: Path, threads: int, progress: bool, source_hash) -> FoldResult:
    import gguf
    from tqdm import tqdm

    src = GGUFFile(model)
    layout = read_layout(src, model)
    scales = load_scales(scales_path)
    scales.check_layout(layout.n_layer, layout.n_head, layout.head_dim, str(scales_path))

    # Fold first: errors surface before anything is written.
    result = FoldResult(out, scales.granularity, layout)
    folded: dict[str, np.ndarray] = {}
    targets = [t for t in src.tensors if ATTN_OUTPUT.match(t.name)]
    for t in tqdm(targets, desc="folding", unit="tensor", disable=not progress, leave=False):
        folded[t.name], result.tensors[t.name] = fold_tensor(src, t, scales, layout, threads)

    V = gguf.GGUFValueType
    new_keys = rope_overrides(layout.arch, scales.metadata, src)
    new_keys.update({
        "seal.version": (__version__, V.STRING),
        "seal.granularity": (scales.granularity, V.STRING),
        "seal.scales_sha256": (sha256_file(scales_path), V.STRING),
        "seal.source_sha256": (HASH_PLACEHOLDER, V.STRING),
    })
    for k in ("task", "length", "samples", "lr", "epochs", "seed", "rope_scaling", "source_sha256"):
        if scales.metadata.get(k):
            new_keys[f"seal.tune.{k}"] = (scales.metadata[k], V.STRING)
    for name, rmse in result.rel_rmse_by_type().items():
        new_keys[f"seal.fold.rel_rmse.{name}"] = (float(rmse), V.FLOAT32)
    new_keys["seal.fold.blocks_requantized"] = (result.blocks("blocks_requantized"), V.UINT64)

    # Header: kept records byte for byte (in order), replaced ones re-packed in place, new ones last.
    records: list[tuple[str, bytes | memoryview]] = []
    for name, f in src.fields.items():
        if name.startswith("seal.") and name not in new_keys:
            continue  # seal.* keys of an earlier fold describe scales that are no longer the latest
        if name in new_keys:
            records.append((name, pack_kv(name, *new_keys.pop(name))))
        else:
            records.append((name, src.raw(f.start, f.end)))
    records += [(k, pack_kv(k, v, t)) for k, (v, t) in new_keys.items()]
    head = struct.pack("<4sIQQ", b"GGUF", src.version, len(src.tensors), len(records))

    with atomic_output(out) as tmp, open(model, "rb") as fin, open(tmp, "wb") as fout:
        fout.write(head)
        for name, r in records:
            fout.write(r)
            if name == "seal.source_sha256":
                hash_at = fout.tell() - len(HASH_PLACEHOLDER)  # the string value ends the record
        fout.write(src.raw(src.kv_end, src.ti_end))  # tensor table: offsets are relative, sizes unchanged
        pos = fout.tell()
        fout.write(b"\0" * (-pos % src.alignment))
        fout.flush()
        cursor = src.data_offset
        for t in sorted(targets, key=lambda t: t.offset):
            start = src.data_offset + t.offset
            _copy_range(fin.fileno(), fout.fileno(), cursor, start)
            os.write(fout.fileno(), folded[t.name].tobytes())
            cursor = start + t.n_bytes
        _copy_range(fin.fileno(), fout.fileno(), cursor, src.size)
        os.pwrite(fout.fileno(), source_hash.result().encode("ascii"), hash_at)
    return result
