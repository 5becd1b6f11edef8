"""The attention layout SEAL needs from a model, whichever reader found it (a GGUF header in fold and
eval, a transformers config in tune): one type, so the scales' shape means the same thing everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AttentionLayout:
    arch: str
    n_layer: int
    n_head: int        # query heads: scales address these, also for grouped-query models
    n_head_kv: int
    head_dim: int      # width of one query head's output = attn_output input columns per head
    context_length: int
    attn_output_types: dict[str, int] = field(default_factory=dict, compare=False)  # GGUF only: type -> layers

    @property
    def n_cols(self) -> int:
        return self.n_head * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_head // self.n_head_kv
