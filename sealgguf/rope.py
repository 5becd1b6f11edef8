"""Rope scaling, one type for the whole pipeline: what `--rope-scaling KIND --rope-factor F` means,
how the scales file records it, and its three renderings:

    transformers   rope parameters of the config the tuner loads          `transformers_params`
    llama.cpp      Llama(...) keyword arguments for eval                    `llama_kwargs`
    GGUF           {arch}.rope.* / context_length keys the fold writes    `gguf_keys`

Kinds: linear (positions divided by F), yarn (YaRN over the original window), ntk (NTK-aware: a larger
rope base, no other change).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from sealgguf.errors import SealError

KINDS = ("none", "linear", "yarn", "ntk")
MAX_FACTOR = 128.0          # beyond this no rope scaling keeps a model usable
MAX_CONTEXT = 1 << 31       # llama.cpp keeps context lengths in uint32/int32


def ntk_base(base: float, factor: float, head_dim: int) -> float:
    """NTK-aware rope base for a context `factor` times longer (the "dynamic NTK" closed form)."""
    return base * factor ** (head_dim / (head_dim - 2))


@dataclass(frozen=True)
class RopeScaling:
    kind: str = "none"
    factor: float = 1.0
    original_context_length: int = 0   # the native window it stretches
    head_dim: int = 0                  # needed by ntk

    def check(self, where: str = "--rope-scaling") -> None:
        if self.kind not in KINDS:
            raise SealError(f"{where}: unknown rope scaling {self.kind!r} (choose from: {', '.join(KINDS)})")
        if self.kind == "none":
            return
        f = self.factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 1.0 < f <= MAX_FACTOR:
            raise SealError(f"{where}: rope factor must be a number in (1, {MAX_FACTOR:g}] with {self.kind} scaling, "
                            f"got {f!r}")
        for name in ("original_context_length", "head_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < MAX_CONTEXT:
                raise SealError(f"{where}: rope {name} must be a non-negative integer, got {v!r}")
        if self.kind == "ntk" and self.head_dim and self.head_dim < 4:
            raise SealError(f"{where}: ntk rope scaling needs head_dim >= 4, got {self.head_dim}")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @classmethod
    def from_cli(cls, kind: str, factor: float) -> "RopeScaling":
        if kind == "none":
            return cls()
        if kind not in KINDS:
            raise SealError(f"--rope-scaling: unknown rope scaling {kind!r} (choose from: {', '.join(KINDS)})")
        if not factor:
            raise SealError(f"--rope-scaling {kind} needs --rope-factor F (F > 1, e.g. 2)")
        r = cls(kind, float(factor))
        r.check("--rope-factor")
        return r

    def bind(self, original_context_length: int, head_dim: int) -> "RopeScaling":
        """The same scaling, tied to a model's native window and head width."""
        if not self.active:
            return self
        return RopeScaling(self.kind, self.factor, original_context_length, head_dim)

    def context(self, native: int) -> int:
        """The context length this scaling reaches from a native window."""
        return int((self.original_context_length or native) * (self.factor if self.active else 1))

    # -- the scales file's record ------------------------------------------------------------
    def to_dict(self) -> dict | None:
        """The scales file's `rope_scaling` record (None when off); to_json is its text."""
        return {"type": self.kind, **{k: v for k, v in asdict(self).items() if k != "kind"}} if self.active else None

    def to_json(self) -> str:
        return json.dumps(self.to_dict()) if self.active else ""

    @classmethod
    def from_json(cls, text: str | None, where: str) -> "RopeScaling":
        """Parse the `rope_scaling` metadata of a scales file; every defect is a one-line SealError."""
        where = f"{where}: metadata 'rope_scaling'"
        if not text:
            return cls()
        try:
            spec = json.loads(text)
        except (ValueError, RecursionError):
            raise SealError(f"{where} is not valid JSON") from None
        if not isinstance(spec, dict):
            raise SealError(f"{where} must be a JSON object, got {type(spec).__name__}")
        kind = spec.get("type", "none")
        if kind in (None, "none"):
            return cls()
        if not isinstance(kind, str):
            raise SealError(f"{where}: 'type' must be a string, got {kind!r}")
        if "factor" not in spec:
            raise SealError(f"{where}: field 'factor' is missing")
        factor = spec["factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise SealError(f"{where}: field 'factor' must be a number, got {factor!r}")
        fields = {}
        for name in ("original_context_length", "head_dim"):
            v = spec.get(name) or 0
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            fields[name] = v
        if kind == "ntk" and not fields["head_dim"]:
            raise SealError(f"{where}: ntk scaling needs field 'head_dim'")
        r = cls(kind, float(factor), **fields)
        r.check(where)
        return r

    # -- renderings --------------------------------------------------------------------------
    def transformers_params(self, theta: float) -> dict:
        """rope parameters for a transformers config (v5 `rope_parameters` layout)."""
        if self.kind == "ntk":
            return {"rope_type": "default", "rope_theta": ntk_base(theta, self.factor, self.head_dim)}
        if self.kind == "linear":
            return {"rope_type": "linear", "factor": self.factor, "rope_theta": theta}
        if self.kind == "yarn":
            return {"rope_type": "yarn", "factor": self.factor, "rope_theta": theta,
                    "original_max_position_embeddings": self.original_context_length}
        return {"rope_type": "default", "rope_theta": theta}

    def llama_kwargs(self, base: float, n_ctx_orig: int, head_dim: int) -> dict:
        """Keyword arguments for llama_cpp.Llama that apply this scaling at load time."""
        from llama_cpp import LLAMA_ROPE_SCALING_TYPE_LINEAR, LLAMA_ROPE_SCALING_TYPE_YARN

        if self.kind == "linear":
            return {"rope_scaling_type": LLAMA_ROPE_SCALING_TYPE_LINEAR, "rope_freq_scale": 1.0 / self.factor}
        if self.kind == "yarn":
            return {"rope_scaling_type": LLAMA_ROPE_SCALING_TYPE_YARN, "rope_freq_scale": 1.0 / self.factor,
                    "yarn_orig_ctx": self.original_context_length or n_ctx_orig}
        if self.kind == "ntk":
            return {"rope_freq_base": ntk_base(base, self.factor, self.head_dim or head_dim)}
        return {}

    def gguf_keys(self, arch: str, base: float, native: int) -> dict[str, tuple]:
        """GGUF metadata (key -> (value, GGUFValueType)) that makes llama.cpp apply this scaling."""
        import gguf

        if not self.active:
            return {}
        V = gguf.GGUFValueType
        n_ctx = self.original_context_length or native
        if not n_ctx:
            raise SealError(f"rope scaling needs the native context length ({arch}.context_length is missing)")
        if self.kind == "ntk":
            return {f"{arch}.rope.freq_base": (ntk_base(base, self.factor, self.head_dim), V.FLOAT32),
                    f"{arch}.context_length": (self.context(n_ctx), V.UINT32)}
        return {
            f"{arch}.rope.scaling.type": (self.kind, V.STRING),
            f"{arch}.rope.scaling.factor": (self.factor, V.FLOAT32),
            f"{arch}.rope.scaling.original_context_length": (n_ctx, V.UINT32),
            f"{arch}.context_length": (self.context(n_ctx), V.UINT32),
        }
