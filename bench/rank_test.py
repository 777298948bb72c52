"""The Mann-Whitney U test (one-sided), for the prompt-cache timing audit.

Distribution-free: it compares ranks, never absolute times, so a slower or busier machine
shifts both samples alike and leaves the statistic alone. The p-value uses the normal
approximation with the tie correction and a continuity correction (accurate for the 20+
samples per side the audit uses; checked against scipy in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class RankTest:
    u: float  # U of ``x``: pairs (x_i, y_j) with x_i < y_j, ties counted half
    p_value: float  # one-sided: the chance of a U this large if x and y had one distribution


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def mann_whitney_less(x: Sequence[float], y: Sequence[float]) -> RankTest:
    """Tests whether ``x`` tends to be smaller than ``y`` (cache hits faster than misses)."""
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        raise ValueError("both samples need at least one value")
    r = ranks([*x, *y])
    # U of x as scipy counts it (x_i > y_j); the one-sided "less" alternative wants it small
    u_greater = sum(r[:n]) - n * (n + 1) / 2
    u = n * m - u_greater
    counts: dict[float, int] = {}
    for v in r:
        counts[v] = counts.get(v, 0) + 1
    ties = sum(t**3 - t for t in counts.values())
    total = n + m
    var = n * m / 12 * ((total + 1) - ties / (total * (total - 1)))
    if var <= 0:  # every value equal: no evidence either way
        return RankTest(u, 1.0)
    z = (u_greater - n * m / 2 + 0.5) / math.sqrt(var)
    return RankTest(u, 0.5 * math.erfc(-z / math.sqrt(2)))
