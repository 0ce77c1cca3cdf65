"""Summary statistics the study scripts share."""

from __future__ import annotations

import math
import statistics


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of ``values`` (both nan when empty; the SE nan for a single value)."""
    if not values:
        return math.nan, math.nan
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.fmean(values), se
