"""The scales file: the contract between `sealgguf tune` and `sealgguf fold`.

A safetensors file with one float32 tensor `scales`:
    granularity "head":    shape [n_layer, n_head]            one scale per query head
    granularity "channel": shape [n_layer, n_head, head_dim]  one scale per head channel
Query heads in Hugging Face order; for grouped-query models the scales still address query heads.
String metadata always includes `granularity` and `form`; the tuner adds how the scales were learned.

Form "columns" (the paper's SEAL): `scales` alone, folded into attn_output's input columns.
Form "factorized" (`tune --exact-fold`): the scales are a product of two factors, each named after the
GGUF tensor it folds into, and `scales` is not stored but composed on load:
    "attn_v":      [n_layer, n_head_kv, head_dim]  rows of attn_v (one vector per KV group)
    "attn_output": [n_layer, n_head]               one scalar per query head, constant over every run of
                                                   heads that a block of attn_output spans
    scale of query head h, channel c = attn_v[l, h // (n_head / n_head_kv), c] * attn_output[l, h]
Scaling a row or a whole block rewrites only its float scale fields, so this form folds with no
requantization. For "head" granularity attn_v is constant over head_dim.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sealgguf.errors import EnvironmentProblem, SealError
from sealgguf.fsutil import atomic_output
from sealgguf.layout import AttentionLayout

GRANULARITIES = ("head", "channel")
FORMS = ("columns", "factorized")
FACTORS = ("attn_v", "attn_output")  # factorized form: tensor names, as the GGUF tensors they fold into


def attn_output_tie(n_head: int, head_dim: int, block_sizes: list[int]) -> int:
    """How many consecutive query heads must share one attn_output scalar so that no block of attn_output
    (in any of these block sizes) sees two different scales: the fold is then exact."""
    tie = 1
    for b in block_sizes:
        tie = math.lcm(tie, math.lcm(head_dim, b) // head_dim)
    return tie if n_head % tie == 0 else n_head


def compose(attn_v: np.ndarray, attn_output: np.ndarray, granularity: str) -> np.ndarray:
    """The per-query-head scales a factorized pair stands for ([L, H, D], or [L, H] for "head")."""
    n_head, n_head_kv = attn_output.shape[1], attn_v.shape[1]
    per_head = np.repeat(attn_v, n_head // n_head_kv, axis=1) * attn_output[:, :, None]
    return np.ascontiguousarray(per_head[:, :, 0] if granularity == "head" else per_head, dtype=np.float32)


@dataclass
class Scales:
    values: np.ndarray  # float32, [n_layer, n_head] or [n_layer, n_head, head_dim]
    metadata: dict[str, str] = field(default_factory=dict)
    factors: dict[str, np.ndarray] | None = None  # form "factorized": FACTORS -> arrays; values = compose(...)

    @property
    def form(self) -> str:
        return "factorized" if self.factors else "columns"

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

    def check_layout(self, layout: AttentionLayout, where: str) -> None:
        L, H, Hkv, D = layout.n_layer, layout.n_head, layout.n_head_kv, layout.head_dim
        want = (L, H) if self.values.ndim == 2 else (L, H, D)
        if tuple(self.values.shape) != want:
            raise SealError(
                f"{where}: scales have shape {list(self.values.shape)} but the model needs {list(want)} "
                f"({self.granularity} granularity: {L} layers x {H} query heads"
                + (f" x {D} channels)" if self.values.ndim == 3 else ")")
            )
        if self.factors and tuple(self.factors["attn_v"].shape) != (L, Hkv, D):
            raise SealError(f"{where}: factor 'attn_v' has shape {list(self.factors['attn_v'].shape)} but the model "
                            f"needs {[L, Hkv, D]} ({L} layers x {Hkv} KV heads x {D} channels)")


def save(path: str | os.PathLike, values: np.ndarray, metadata: dict[str, object],
         factors: dict[str, np.ndarray] | None = None) -> None:
    """Write a scales file. With `factors` (form "factorized") the factors are stored and `values` must be
    their composition; without, `values` is stored as `scales`."""
    from safetensors.numpy import save_file

    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim not in (2, 3):
        raise SealError(f"scales must be 2-D (head) or 3-D (channel), got shape {list(values.shape)}")
    granularity = "head" if values.ndim == 2 else "channel"
    tensors = {"scales": values}
    if factors is not None:
        tensors = {k: np.ascontiguousarray(factors[k], dtype=np.float32) for k in FACTORS}
        if not np.array_equal(compose(tensors["attn_v"], tensors["attn_output"], granularity), values):
            raise SealError(f"{path}: scales are not the composition of their factors")
    for name, t in tensors.items():
        if not np.isfinite(t).all():
            raise SealError(f"{path}: refusing to write non-finite scales ({name})")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta["granularity"] = granularity
    meta["form"] = "factorized" if factors is not None else "columns"
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load(path: str | os.PathLike) -> Scales:
    """Read and validate a scales file; every problem is a one-line SealError naming the file."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise EnvironmentProblem(f"{p}: scales file not found")
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise SealError(f"{p}: not a safetensors scales file ({str(e).splitlines()[0]})") from None
    granularity, form = meta.get("granularity"), meta.get("form", "columns")  # files before 0.3 have no form
    if granularity not in GRANULARITIES:
        raise SealError(f"{p}: metadata 'granularity' must be 'head' or 'channel', got {granularity!r}")
    if form not in FORMS:
        raise SealError(f"{p}: metadata 'form' must be one of {', '.join(FORMS)}, got {form!r}")
    want = ("scales",) if form == "columns" else FACTORS
    missing = [n for n in want if n not in tensors]
    if missing:
        raise SealError(f"{p}: no tensor named {missing[0]!r} (form {form} needs {', '.join(want)}; found: "
                        f"{', '.join(tensors) or 'none'})")
    for name in want:
        values = tensors[name]
        if values.dtype != np.float32:
            raise SealError(f"{p}: tensor {name!r} is {values.dtype}, expected float32")
        bad = ~np.isfinite(values)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise SealError(f"{p}: tensor {name!r}: scale at index {list(idx)} is {values[idx]}; scales must be finite")
    if form == "columns":
        values = tensors["scales"]
        if values.ndim not in (2, 3):
            raise SealError(f"{p}: tensor 'scales' has shape {list(values.shape)}, expected 2-D (head) or 3-D (channel)")
        scales = Scales(values=values, metadata=meta)
        if scales.granularity != granularity:
            raise SealError(f"{p}: metadata says granularity {granularity!r} but 'scales' has shape {list(values.shape)}")
        return scales
    v, o = tensors["attn_v"], tensors["attn_output"]
    if v.ndim != 3 or o.ndim != 2 or v.shape[0] != o.shape[0] or v.shape[1] < 1 or o.shape[1] % v.shape[1]:
        raise SealError(f"{p}: factors 'attn_v' {list(v.shape)} and 'attn_output' {list(o.shape)} do not fit "
                        "[n_layer, n_head_kv, head_dim] and [n_layer, n_head] with n_head a multiple of n_head_kv")
    if granularity == "head" and not (v == v[:, :, :1]).all():
        raise SealError(f"{p}: granularity 'head' but 'attn_v' varies over head_dim")
    return Scales(values=compose(v, o, granularity), metadata=meta, factors={"attn_v": v, "attn_output": o})
