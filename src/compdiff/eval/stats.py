"""Intervals for the tables: every accuracy is a binomial proportion over n independent sets."""
from __future__ import annotations

import math


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (95% for z = 1.96), as fractions.
    Unlike p ± z·sqrt(p(1−p)/n) it stays inside [0, 1] and is not empty at p = 0 or 1."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
