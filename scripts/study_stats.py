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


def welch(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, tuple[float, float], float]:
    """mean(a) - mean(b), its Welch standard error, its two-sided ``level`` confidence interval
    (Welch-Satterthwaite degrees of freedom) and the one-sided p-value for mean(a) > mean(b)."""
    from scipy import stats  # noqa: PLC0415 - scipy comes with the es extra; only the reports need it

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff, se = statistics.fmean(a) - statistics.fmean(b), math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else float("inf")
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    return diff, se, (diff - half, diff + half), p
