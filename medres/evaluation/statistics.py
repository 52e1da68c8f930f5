"""Uncertainty of summary figures: bootstrap confidence intervals and paired comparisons.

Cases (patients or scans) are the unit of resampling: a 95 % interval says how much the
mean would move with another sample of cases like these. Every interval is a percentile
bootstrap by ``scipy.stats.bootstrap`` with :data:`N_BOOTSTRAP` resamples, seeded, so the
same inputs always give the same intervals.

Example:
    >>> low, high = bootstrap_ci([0.7, 0.8, 0.9, 0.75, 0.85])
    >>> bool(low < 0.8 < high)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

#: Bootstrap resamples, for every interval medres reports.
N_BOOTSTRAP = 2000


def _finite(values: Sequence[float]) -> np.ndarray[Any, np.dtype[np.float64]]:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def bootstrap_ci(
    values: Sequence[float], *, level: float = 0.95, n_resamples: int = N_BOOTSTRAP, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over cases (NaN values left out).

    Returns ``(nan, nan)`` with no finite value; ``(x, x)`` with one.
    """
    data = _finite(values)
    if data.size == 0:
        return (math.nan, math.nan)
    if data.size == 1 or np.all(data == data[0]):
        return (float(data[0]), float(data[0]))
    from scipy.stats import bootstrap

    result = bootstrap(
        (data,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=level,
        method="percentile",
        rng=seed,
    )
    interval = result.confidence_interval
    return (float(interval.low), float(interval.high))


def bootstrap_cases_ci(
    n_cases: int,
    statistic: Callable[[npt.NDArray[np.intp]], Sequence[float]],
    *,
    level: float = 0.95,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """Percentile bootstrap intervals of figures pooled over cases (FROC, F1...).

    Args:
        n_cases: How many cases.
        statistic: Case indices of one resample (with repeats) -> the figures.
        level: Confidence level.
        n_resamples: Resamples.
        seed: Seed of the resampling.

    Returns:
        ``(low, high)`` per figure; the figures themselves with one case.
    """
    indices = np.arange(n_cases)
    if n_cases == 1:
        return [(float(v), float(v)) for v in statistic(indices)]
    from scipy.stats import bootstrap

    def figures(sample: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        return np.asarray(statistic(sample.astype(np.intp)), dtype=np.float64)

    result = bootstrap(
        (indices,),
        figures,
        n_resamples=n_resamples,
        confidence_level=level,
        method="percentile",
        vectorized=False,
        rng=seed,
    )
    lows = np.atleast_1d(result.confidence_interval.low)
    highs = np.atleast_1d(result.confidence_interval.high)
    return [(float(a), float(b)) for a, b in zip(lows, highs, strict=True)]


def describe(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, median, 95 % bootstrap CI of the mean and count of the finite values."""
    data = _finite(values)
    low, high = bootstrap_ci(values)
    return {
        "mean": float(data.mean()) if data.size else math.nan,
        "median": float(np.median(data)) if data.size else math.nan,
        "ci_low": low,
        "ci_high": high,
        "n": int(data.size),
    }


def paired_comparison(
    member: Sequence[float], ensemble: Sequence[float], *, seed: int = 0
) -> dict[str, float | int]:
    """Member minus ensemble, case by case: mean difference, its 95 % bootstrap CI, and
    the two-sided Wilcoxon signed-rank p-value (NaN with fewer than 2 non-zero pairs)."""
    a = np.asarray(member, dtype=np.float64)
    b = np.asarray(ensemble, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    diff = a[keep] - b[keep]
    low, high = bootstrap_ci(list(diff), seed=seed)
    p_value = math.nan
    if np.count_nonzero(diff) >= 2:
        from scipy.stats import wilcoxon

        p_value = float(wilcoxon(diff, zero_method="wilcox").pvalue)
    return {
        "mean_difference": float(diff.mean()) if diff.size else math.nan,
        "ci_low": low,
        "ci_high": high,
        "p_value": p_value,
        "n": int(diff.size),
    }


__all__ = ["N_BOOTSTRAP", "bootstrap_cases_ci", "bootstrap_ci", "describe", "paired_comparison"]
