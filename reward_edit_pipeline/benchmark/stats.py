"""Statistics for the report: means with percentile-bootstrap confidence intervals, and an exact sign test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BOOTSTRAP_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A sample mean with its bootstrap confidence interval (``None`` bounds when there are no values)."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    count: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.count}


def bootstrap_mean(
    values: Sequence[float],
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Mean of `values` and its percentile-bootstrap confidence interval.

    Deterministic for a given `seed`. With one value the interval collapses to it; with none everything is ``None``.
    """
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"`resamples` must be an integer >= 1, got {resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}")
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        return Estimate(None, None, None, 0)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"`values` must be finite numbers, got {data.tolist()!r}")
    mean = float(data.mean())
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, data.size, size=(resamples, data.size))
    resampled_means = data[indices].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled_means, [alpha, 1.0 - alpha])
    return Estimate(mean, float(low), float(high), int(data.size))


def sign_test_p_value(wins: int, losses: int) -> float | None:
    """Two-sided exact sign test (ties excluded): probability of a split at least this uneven under a fair coin."""
    if wins < 0 or losses < 0:
        raise ValueError(f"`wins` and `losses` must be >= 0, got {wins}, {losses}")
    trials = wins + losses
    if trials == 0:
        return None
    smaller = min(wins, losses)
    tail = sum(math.comb(trials, k) for k in range(smaller + 1)) / 2.0**trials
    return min(1.0, 2.0 * tail)
