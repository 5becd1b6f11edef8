"""Fold SEAL scales into a quantized GGUF (the C++ engine does the block work)."""

from sealgguf.gguf_file import open_gguf, read_layout
from sealgguf.fold.rewrite import FoldResult, exact_per_head, fold_file, foldable_types, requantizes

__all__ = ["FoldResult", "exact_per_head", "fold_file", "foldable_types", "open_gguf", "read_layout",
           "requantizes"]
