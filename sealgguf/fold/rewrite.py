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
from sealgguf.gguf_file import ATTN_OUTPUT, STRING, _SCALAR, GGUFFile, TensorInfo, read_layout
from sealgguf.fsutil import atomic_output, sha256_file
from sealgguf.layout import AttentionLayout
from sealgguf.rope import RopeScaling
from sealgguf.scales import Scales, load as load_scales

# A folded head may differ from the exactly scaled weights by requantization (~0.09 relative RMSE for
# Q4_1); a head zeroed by fp16 underflow differs by 1.0. Anything past this is refused.
MAX_HEAD_REL_ERROR = 0.5


def foldable_types() -> list[str]:
    """The ggml types the C++ engine folds (asked of the engine, so the list cannot drift)."""
    import gguf

    from sealgguf import _core

    return [t.name for t in gguf.GGMLQuantizationType if _core.supported(int(t))]


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
        raise SealError(f"{src.path}: tensor {t.name}: cannot fold type {src.type_name(t)} "
                        f"(supported: {', '.join(foldable_types())})")
    cols = scales.column_scales(layer, layout.head_dim)
    new, stats = _core.fold(src.tensor_data(t), t.type_id, layout.n_cols, cols, threads)
    stats["type"] = src.type_name(t)
    check_folded(src, t, new, cols, layer, layout)
    return new.reshape(-1), stats


def check_folded(src: GGUFFile, t: TensorInfo, new: np.ndarray, cols: np.ndarray, layer: int,
                 layout: AttentionLayout) -> None:
    """Refuse a fold whose result is not the scaled weights: values that are not finite (a scale times
    a block scale overflowed fp16) or heads lost to fp16 underflow. Names the layer and head."""
    from sealgguf import _core

    got = _core.dequantize(new.reshape(-1), t.type_id, layout.n_cols)
    original = _core.dequantize(src.tensor_data(t), t.type_id, layout.n_cols)
    if not np.isfinite(original).all():
        raise SealError(f"{src.path}: tensor {t.name} already holds values that are not finite; the input model "
                        "is broken")
    want = original * cols
    for h in range(layout.n_head):
        sl = slice(h * layout.head_dim, (h + 1) * layout.head_dim)
        scale = cols[sl]
        g, w = got[:, sl], want[:, sl]
        what = f"scale {float(np.abs(scale).max()):.3g} on layer {layer} head {h} ({src.type_name(t)} {t.name})"
        if not np.isfinite(g).all() or not np.isfinite(w).all():
            raise SealError(f"{what} overflows: the folded weights are not finite (fp16 block scales top out at 65504)")
        norm = float(np.sqrt(np.square(w, dtype=np.float64).sum()))
        if norm > 0:
            err = float(np.sqrt(np.square(g - w, dtype=np.float64).sum())) / norm
            if err > MAX_HEAD_REL_ERROR:
                raise SealError(f"{what} underflows: the folded head differs from the scaled weights by "
                                f"{err:.0%} (fp16 block scales cannot hold values that small)")


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
    for name, src in (("model", model), ("scales file", Path(scales_path))):
        if out.exists() and src.exists() and os.path.samefile(out, src):
            raise SealError(f"{out}: output would overwrite the input {name}; choose another -o path")
    if out.is_dir():
        raise SealError(f"{out}: is a folder; -o takes the path of the GGUF to write")
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
    rope = RopeScaling.from_json(scales.metadata.get("rope_scaling"), str(scales_path))
    new_keys = rope.gguf_keys(layout.arch, float(src.get(f"{layout.arch}.rope.freq_base", 10000.0)),
                              layout.context_length)
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
        fout.flush()
        verify_written(tmp, out)
    return result


def verify_written(tmp: Path, out: Path) -> None:
    """Read the written file back before it replaces anything: its header must pass the same validation
    as any input, and every attn_output weight must dequantize to finite values."""
    from sealgguf import _core

    try:
        written = GGUFFile(tmp)
        layout = read_layout(written, out)
    except SealError as e:
        raise SealError(f"{out}: internal check of the written file failed ({e}); nothing was written") from None
    for t in written.tensors:
        if ATTN_OUTPUT.match(t.name):
            values = _core.dequantize(written.tensor_data(t), t.type_id, layout.n_cols)
            if not np.isfinite(values).all():
                raise SealError(f"{out}: {t.name} would not be finite; nothing was written")
