"""Statistics behind the tables: confidence intervals over seeds and Welch's difference test.

Every run of a method is one independent sample (its seed). For a method with runs x₁..xₙ:

- ``mean_interval``: the 95% t interval of the mean, x̄ ± t(0.975, n−1) · s/√n;
- ``welch_difference``: for two methods a (an Align variant) and b (its baseline), the
  difference x̄_a − x̄_b with Welch's 95% interval, x̄_a − x̄_b ± t(0.975, ν) · √(s_a²/n_a +
  s_b²/n_b), ν by Welch–Satterthwaite, and the two-sided p-value of Welch's t test (the same
  test as ``scipy.stats.ttest_ind(a, b, equal_var=False)``). The difference is significant
  when the interval excludes 0 (equivalently p < 0.05).

With fewer than two runs on either side no interval exists: the functions return None and the
tables say that no significance can be given. Pure numpy/scipy: no torch, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided ``CONFIDENCE`` interval (same units as the samples)."""

    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


@dataclass(frozen=True)
class Difference(Interval):
    """A Welch difference: the interval plus the test's degrees of freedom and p-value."""

    dof: float = math.nan
    p_value: float = math.nan


def _samples(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[~np.isnan(array)]


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval | None:
    """The t interval of the mean of ``values`` (NaNs dropped); None for fewer than 2."""
    x = _samples(values)
    if len(x) < 2:
        return None
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return Interval(float(x.mean()), float(x.mean() - half), float(x.mean() + half))


def welch_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> Difference | None:
    """mean(a) − mean(b) with Welch's interval and p-value; None when either side has fewer
    than 2 values. Two constant, equal samples give a zero-width interval and p = 1."""
    x, y = _samples(a), _samples(b)
    if len(x) < 2 or len(y) < 2:
        return None
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    diff = float(x.mean() - y.mean())
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Difference(diff, diff, diff, math.inf, 1.0 if diff == 0.0 else 0.0)
    dof = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, dof) * se
    p_value = 2.0 * stats.t.sf(abs(diff) / se, dof)
    return Difference(diff, diff - half, diff + half, float(dof), float(p_value))
