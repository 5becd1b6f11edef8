"""The model with the scales applied exactly, and the sealed model, in a form llama.cpp runs the same way.

`write_exact`: the input GGUF with every tensor `fold` touches stored as F32 values original × scales,
computed in float32 with no rounding to a block format: what the sealed file approximates.
`write_unpacked`: the sealed GGUF with those same tensors dequantized to F32 (the values it holds).
llama.cpp quantizes activations for a matmul with a quantized weight and not for an F32 one, so the two
F32 files are what `fold --kl-windows` and `seal` compare: only the fold's own rounding differs.

Tensor sizes change, so the tensor table is written anew (same order, offsets recomputed); every
metadata record and every other tensor's bytes are copied as they were.
"""

from __future__ import annotations

import math
import os
import struct

import numpy as np

from sealgguf.fold.rewrite import FoldPlan, plan_tensor
from sealgguf.gguf_file import GGUFFile, read_layout
from sealgguf.scales import load as load_scales

F32 = 0  # ggml type id


def write_exact(model: str | os.PathLike, scales_path: str | os.PathLike, out: str | os.PathLike,
                nudge: float = 0.0) -> set[str]:
    """Write the exactly scaled model to `out`, every scaled value times (1 + nudge); returns the names of the
    tensors stored as F32. A nudge of 1e-6 changes nothing a model could care about, and shows the engine's floor:
    llama.cpp quantizes activations, so any change at all flips some roundings and the KL between two runs
    settles at that noise level, not at zero."""
    src = GGUFFile(model)
    layout = read_layout(src, model)
    scales = load_scales(scales_path)
    scales.check_layout(layout, str(scales_path))
    plans = {t.name: plan_tensor(t, scales, layout) for t in src.tensors}
    _write_f32(src, out, plans, 1.0 + nudge)
    return {name for name, plan in plans.items() if plan}


def write_unpacked(sealed: str | os.PathLike, names: set[str], out: str | os.PathLike) -> None:
    """Write `sealed` to `out` with the tensors `names` dequantized to F32."""
    src = GGUFFile(sealed)
    _write_f32(src, out, {t.name: FoldPlan(None, None, []) if t.name in names else None for t in src.tensors})


def _write_f32(src: GGUFFile, out: str | os.PathLike, plans: dict[str, FoldPlan | None], factor: float = 1.0) -> None:
    """`src` with every tensor that has a plan stored as F32 (times the plan's row and column scales, and factor)."""
    from sealgguf import _core

    align = src.alignment

    def padded(n: int) -> int:
        return -(-n // align) * align

    table, offset = [], 0
    for t in src.tensors:
        n_bytes = math.prod(t.shape) * 4 if plans[t.name] else t.n_bytes
        name = t.name.encode("utf-8")
        table.append(struct.pack("<Q", len(name)) + name + struct.pack("<I", len(t.shape))
                     + struct.pack(f"<{len(t.shape)}Q", *t.shape)
                     + struct.pack("<IQ", F32 if plans[t.name] else t.type_id, offset))
        offset += padded(n_bytes)

    with open(out, "wb") as f:
        f.write(struct.pack("<4sIQQ", b"GGUF", src.version, len(src.tensors), len(src.fields)))
        f.write(src.raw(24, src.kv_end))  # every metadata record, as it was (they start after the 24-byte header)
        f.write(b"".join(table))
        f.write(b"\0" * (padded(f.tell()) - f.tell()))
        for t in src.tensors:
            plan = plans[t.name]
            if plan is None:
                data = src.tensor_data(t)
            else:
                n_per_row = int(t.shape[0])
                values = _core.dequantize(src.tensor_data(t), t.type_id, n_per_row)
                if plan.rows is not None:
                    values *= plan.rows[:, None]
                if plan.cols is not None:
                    values *= plan.cols[None, :]
                if factor != 1.0:
                    values *= np.float32(factor)
                data = np.ascontiguousarray(values, dtype=np.float32)
            f.write(memoryview(data).cast("B"))
            n = data.nbytes
            f.write(b"\0" * (padded(n) - n))
