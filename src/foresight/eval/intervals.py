"""Confidence intervals for the rates evaluations report (star-graph exact match, HumanEval pass@1)."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion (``successes`` of ``n`` trials); sensible at 0 and n, unlike
    the normal approximation. ``n <= 0``: (0, 1), nothing is known."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
