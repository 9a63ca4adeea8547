"""Rank correlation without scipy: Spearman's rho (average ranks for ties) and Kendall's tau-b.

Both return NaN when undefined (fewer than two values, or one side constant) and raise ValueError when the
sequences differ in length. NaN inputs are not supported (ValueError).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _values(xs: Sequence[float], what: str) -> list[float]:
    vals = [float(v) for v in xs]
    if any(math.isnan(v) for v in vals):
        raise ValueError(f"{what} contains NaN")
    return vals


def rankdata(xs: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the average of the ranks they span.

    ``rankdata([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]``.
    """
    vals = _values(xs, "xs")
    order = sorted(range(len(vals)), key=lambda i: vals[i])
    ranks = [0.0] * len(vals)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and vals[order[j + 1]] == vals[order[i]]:
            j += 1
        avg = (i + j) / 2.0 + 1.0
        for t in range(i, j + 1):
            ranks[order[t]] = avg
        i = j + 1
    return ranks


def _pearson(a: list[float], b: list[float]) -> float:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    if va == 0 or vb == 0:
        return math.nan
    return cov / math.sqrt(va * vb)


def _check(xs: Sequence[float], ys: Sequence[float]) -> None:
    if len(xs) != len(ys):
        raise ValueError(f"sequences differ in length: {len(xs)} vs {len(ys)}")


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson correlation of the average ranks (exact with ties)."""
    _check(xs, ys)
    if len(xs) < 2:
        return math.nan
    return _pearson(rankdata(xs), rankdata(ys))


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall's tau-b: ``(concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y))`` over all pairs (O(n²))."""
    _check(xs, ys)
    a, b = _values(xs, "xs"), _values(ys, "ys")
    n = len(a)
    if n < 2:
        return math.nan
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = a[i] - a[j]
            dy = b[i] - b[j]
            if dx == 0 and dy == 0:
                tx += 1
                ty += 1
            elif dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    n0 = n * (n - 1) // 2
    den = math.sqrt((n0 - tx) * (n0 - ty))
    return (conc - disc) / den if den > 0 else math.nan
