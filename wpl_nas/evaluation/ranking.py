"""Agreement between two rankings of the same candidates."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["kendall_tau", "spearman_rho", "top_k_overlap"]


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b between two score lists of the same candidates (ties handled as τ-b does).

    1: the same order, −1: reversed, 0: unrelated. NaN when either list has fewer than two
    distinct values (no order to compare). O(n²), meant for pools of tens to hundreds.

    Raises:
        ValueError: the lists differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"kendall_tau needs two lists of the same length, but got {len(a)} and {len(b)}")
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else math.nan


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman_rho(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ: the Pearson correlation of the two lists' ranks (average ranks for ties).
    NaN when either list is constant.

    Raises:
        ValueError: the lists differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"spearman_rho needs two lists of the same length, but got {len(a)} and {len(b)}")
    ra, rb = _ranks(a), _ranks(b)
    n = len(ra)
    if n < 2:
        return math.nan
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else math.nan


def top_k_overlap(a: Sequence[float], b: Sequence[float], k: int) -> float:
    """Share of the ``k`` best candidates by ``a`` that are also among the ``k`` best by ``b``
    (ties broken by position). ``k`` is capped at the number of candidates.

    Raises:
        ValueError: the lists differ in length, or ``k`` < 1.
    """
    if len(a) != len(b):
        raise ValueError(f"top_k_overlap needs two lists of the same length, but got {len(a)} and {len(b)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, but got {k=}")
    k = min(k, len(a))
    if k == 0:
        return math.nan
    best_a = set(sorted(range(len(a)), key=lambda i: (-a[i], i))[:k])
    best_b = set(sorted(range(len(b)), key=lambda i: (-b[i], i))[:k])
    return len(best_a & best_b) / k
