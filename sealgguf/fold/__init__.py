"""Fold SEAL scales into a quantized GGUF (the C++ engine does the block work)."""

from sealgguf.fold.gguf_file import AttentionLayout, open_gguf, read_layout
from sealgguf.fold.rewrite import FoldResult, exact_per_head, fold_file

__all__ = ["AttentionLayout", "FoldResult", "exact_per_head", "fold_file", "open_gguf", "read_layout"]
