"""The scales file: the contract between `sealgguf tune` and `sealgguf fold`.

A safetensors file with one float32 tensor `scales`:
    granularity "head":    shape [n_layer, n_head]            one scale per query head
    granularity "channel": shape [n_layer, n_head, head_dim]  one scale per head channel
Query heads in Hugging Face order; for grouped-query models the scales still address query heads.
String metadata always includes `granularity`; the tuner adds how the scales were learned.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sealgguf.errors import EnvironmentProblem, SealError
from sealgguf.fsutil import atomic_output

GRANULARITIES = ("head", "channel")


@dataclass
class Scales:
    values: np.ndarray  # float32, [n_layer, n_head] or [n_layer, n_head, head_dim]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def granularity(self) -> str:
        return "head" if self.values.ndim == 2 else "channel"

    @property
    def n_layer(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_head(self) -> int:
        return int(self.values.shape[1])

    def column_scales(self, layer: int, head_dim: int) -> np.ndarray:
        """Scales for the n_head * head_dim input columns of layer `layer`'s attn_output."""
        v = self.values[layer]
        if v.ndim == 1:
            v = np.repeat(v, head_dim)
        return np.ascontiguousarray(v.reshape(-1), dtype=np.float32)

    def check_layout(self, n_layer: int, n_head: int, head_dim: int, where: str) -> None:
        want = (n_layer, n_head) if self.values.ndim == 2 else (n_layer, n_head, head_dim)
        if tuple(self.values.shape) != want:
            raise SealError(
                f"{where}: scales have shape {list(self.values.shape)} but the model needs {list(want)} "
                f"({self.granularity} granularity: {n_layer} layers x {n_head} query heads"
                + (f" x {head_dim} channels)" if self.values.ndim == 3 else ")")
            )


def save(path: str | os.PathLike, values: np.ndarray, metadata: dict[str, object]) -> None:
    from safetensors.numpy import save_file

    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim not in (2, 3):
        raise SealError(f"scales must be 2-D (head) or 3-D (channel), got shape {list(values.shape)}")
    if not np.isfinite(values).all():
        raise SealError(f"{path}: refusing to write non-finite scales")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta["granularity"] = "head" if values.ndim == 2 else "channel"
    with atomic_output(path) as tmp:
        save_file({"scales": values}, str(tmp), metadata=meta)


def load(path: str | os.PathLike) -> Scales:
    """Read and validate a scales file; every problem is a one-line SealError naming the file."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise EnvironmentProblem(f"{p}: scales file not found")
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            names = list(f.keys())
            if "scales" not in names:
                raise SealError(f"{p}: no tensor named 'scales' (found: {', '.join(names) or 'none'})")
            values = f.get_tensor("scales")
    except SealError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise SealError(f"{p}: not a safetensors scales file ({str(e).splitlines()[0]})") from None
    if values.dtype != np.float32:
        raise SealError(f"{p}: tensor 'scales' is {values.dtype}, expected float32")
    if values.ndim not in (2, 3):
        raise SealError(f"{p}: tensor 'scales' has shape {list(values.shape)}, expected 2-D (head) or 3-D (channel)")
    bad = ~np.isfinite(values)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise SealError(f"{p}: scale at index {list(idx)} is {values[idx]}; scales must be finite")
    granularity = meta.get("granularity")
    if granularity not in GRANULARITIES:
        raise SealError(f"{p}: metadata 'granularity' must be 'head' or 'channel', got {granularity!r}")
    scales = Scales(values=values, metadata=meta)
    if scales.granularity != granularity:
        raise SealError(f"{p}: metadata says granularity {granularity!r} but 'scales' has shape {list(values.shape)}")
    return scales
