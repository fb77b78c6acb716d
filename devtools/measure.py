"""Small statistics the benchmarks share."""

from __future__ import annotations

import math


def percentile(values: list[float], p: float) -> float:
    """Return the nearest-rank p-th percentile (0 < p <= 100) of non-empty values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
