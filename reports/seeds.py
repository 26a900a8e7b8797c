"""Results over seeds, as pure functions on plain numbers: the mean and spread of a network's metrics over
training seeds, and whether the difference between two such results is larger than their noise.

One seed proves nothing at the accuracies a short CPU run reaches: two seeds of one configuration
commonly differ by a point or more. A control (``followup.control``) is therefore run over several
``train.seed`` values, and so is the trial it controls (the ``repeat`` kind: the trial's own config with
other seeds; the trial itself is one of the samples).

- ``seed_stats``: n, mean and sample standard deviation (ddof 1; NaN below two samples) per metric;
- ``compare``: ``a - b`` of the means, its standard error ``sqrt(sd_a^2 / n_a + sd_b^2 / n_b)``
  (NaN when either side has fewer than two samples) and a word: ``higher`` / ``lower`` when the
  difference is more than ``NOISE_SE`` (2) standard errors from 0, ``within noise`` when it is not,
  ``one seed`` when the standard error is unknown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

NOISE_SE = 2.0  # a difference counts when it is more than this many standard errors from 0


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SeedStats:
    """A metric's mean and sample standard deviation over ``n`` seeds (samples missing a metric skipped)."""

    n: int
    mean: Mapping[str, float] = field(default_factory=dict)
    sd: Mapping[str, float] = field(default_factory=dict)  # NaN with fewer than two samples
    count: Mapping[str, int] = field(default_factory=dict)  # samples that had the metric
    seeds: tuple[int | None, ...] = ()

    def get(self, metric: str) -> tuple[float, float, int]:
        """(mean, sd, samples) of ``metric``: (NaN, NaN, 0) when no sample has it."""
        return self.mean.get(metric, math.nan), self.sd.get(metric, math.nan), self.count.get(metric, 0)


def seed_stats(samples: Sequence[Mapping[str, float]], metrics: Sequence[str],
               seeds: Sequence[int | None] = ()) -> SeedStats:
    """Mean and sample standard deviation (ddof 1) of each of ``metrics`` over ``samples`` (one mapping per
    seed); a sample without a finite value of a metric does not count for it."""
    mean, sd, count = {}, {}, {}
    for m in metrics:
        values = [float(s[m]) for s in samples if _finite(s.get(m))]
        count[m] = len(values)
        if not values:
            continue
        mu = sum(values) / len(values)
        mean[m] = mu
        sd[m] = math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return SeedStats(len(samples), mean, sd, count, tuple(seeds))


@dataclass(frozen=True)
class Difference:
    """``a - b`` of two results' means of one metric, its standard error and what it says."""

    metric: str
    diff: float
    se: float  # NaN when either side has fewer than two samples
    word: str  # higher | lower | within noise | one seed | no data


def compare(a: SeedStats, b: SeedStats, metric: str) -> Difference:
    """The difference of ``a``'s and ``b``'s means of ``metric`` and whether it is more than noise
    (module docstring)."""
    mean_a, sd_a, n_a = a.get(metric)
    mean_b, sd_b, n_b = b.get(metric)
    if not (n_a and n_b):
        return Difference(metric, math.nan, math.nan, "no data")
    diff = mean_a - mean_b
    if n_a < 2 or n_b < 2:
        return Difference(metric, diff, math.nan, "one seed")
    se = math.sqrt(sd_a ** 2 / n_a + sd_b ** 2 / n_b)
    if abs(diff) <= NOISE_SE * se:
        return Difference(metric, diff, se, "within noise")
    return Difference(metric, diff, se, "higher" if diff > 0 else "lower")
