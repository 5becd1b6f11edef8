"""Seeds of the three sample splits. Training, validation and evaluation draw from disjoint ranges,
so no tuning run ever sees a sample that eval scores (and eval's default seeds are fixed)."""

from __future__ import annotations

SPLIT_BASE = {"train": 0, "val": 500_000, "eval": 900_000}


def split_seeds(split: str, n: int, seed: int = 0) -> list[int]:
    """The first `n` seeds of `split` for run seed `seed`."""
    return [seed * 1_000_000 + SPLIT_BASE[split] + i for i in range(n)]
