"""Summary statistics shared by reports, the demo and the experiments."""

from __future__ import annotations

import math
from collections.abc import Iterable


def mean(values: Iterable[float]) -> float:
    """The arithmetic mean (left-to-right float sum); an empty input is an error (a score of nothing is not zero)."""
    data = list(values)
    if not data:
        raise ValueError("mean of no values")
    return sum(data) / len(data)


def mean_se(values: Iterable[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / √n; 0 for a single value)."""
    data = list(values)
    centre = mean(data)
    if len(data) < 2:
        return centre, 0.0
    return centre, math.sqrt(sum((v - centre) ** 2 for v in data) / (len(data) - 1) / len(data))
