"""Carry the rope scaling used during tuning into the exported GGUF's metadata.

The tuner records `rope_scaling` in the scales metadata as JSON: {"type": "linear"|"yarn"|"ntk",
"factor": F, "original_context_length": N}. llama.cpp reads linear and YaRN scaling from
`{arch}.rope.scaling.*`; NTK-aware scaling is a larger rope base, written to `{arch}.rope.freq_base`.
"""

from __future__ import annotations

import json


def ntk_base(base: float, factor: float, head_dim: int) -> float:
    """NTK-aware rope base for a context `factor` times longer (the "dynamic NTK" closed form)."""
    return base * factor ** (head_dim / (head_dim - 2))


def rope_overrides(arch: str, scales_meta: dict[str, str], reader) -> dict[str, tuple]:
    import gguf

    from sealgguf.fold.gguf_file import field_value

    raw = scales_meta.get("rope_scaling")
    if not raw:
        return {}
    spec = json.loads(raw)
    if not spec or spec.get("type") in (None, "none"):
        return {}
    factor = float(spec["factor"])
    n_ctx = int(spec.get("original_context_length") or field_value(reader, f"{arch}.context_length", 0))
    V = gguf.GGUFValueType
    if spec["type"] == "ntk":
        head_dim = int(spec["head_dim"])
        base = float(field_value(reader, f"{arch}.rope.freq_base", 10000.0))
        return {f"{arch}.rope.freq_base": (ntk_base(base, factor, head_dim), V.FLOAT32),
                f"{arch}.context_length": (int(n_ctx * factor), V.UINT32)}
    return {
        f"{arch}.rope.scaling.type": (spec["type"], V.STRING),
        f"{arch}.rope.scaling.factor": (factor, V.FLOAT32),
        f"{arch}.rope.scaling.original_context_length": (n_ctx, V.UINT32),
        f"{arch}.context_length": (int(n_ctx * factor), V.UINT32),
    }
