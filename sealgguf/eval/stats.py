"""Paired comparison of two models scored on the same samples.

n is small (tens of samples), so every difference comes with how sure we are: a paired bootstrap
95% interval for the accuracy difference and the exact McNemar p-value on the discordant pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Paired:
    n: int
    acc_a: float
    acc_b: float
    diff: float          # acc_b - acc_a
    ci_low: float        # 95% paired bootstrap interval of diff
    ci_high: float
    only_a: int          # discordant pairs: a right, b wrong
    only_b: int          # discordant pairs: b right, a wrong
    p_mcnemar: float     # exact two-sided McNemar test


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact binomial test of only_b vs only_a under p = 1/2."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired(a: list[bool], b: list[bool], n_boot: int = 4000, seed: int = 0) -> Paired:
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs equal lengths, got {len(a)} and {len(b)}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(x)
    if n == 0:
        return Paired(0, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), 0, 0, 1.0)
    d = y - x
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots = d[idx].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    only_a, only_b = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    return Paired(n, float(x.mean()), float(y.mean()), float(d.mean()), float(lo), float(hi),
                  only_a, only_b, mcnemar_exact(only_a, only_b))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy k / n (sensible at 0, n and small n, unlike the normal one)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def spearman(a, b) -> float:
    """Spearman rank correlation (ties get their average rank)."""
    def ranks(x):
        x = np.asarray(x, dtype=float).ravel()
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for v in np.unique(x):  # average the ranks of ties
            tie = x == v
            r[tie] = r[tie].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
