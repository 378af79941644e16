"""Agreement between two rankings of the same candidates."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["kendall_tau"]


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
