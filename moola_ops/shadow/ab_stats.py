"""Bootstrap estimates for the A/B: a figure with its percentile CI, vectorised.

The mean of a resample is drawn from a multinomial over the distinct per-pair values (exact for
agreement, accuracy and IoU differences, whose values come from a small set; values are put on
a 4,096-level grid only when there are more distinct ones, moving a resample's mean by under
2.5e-4), and a quantile of a resample is the order statistic at a Beta-distributed rank (exact
for the percentile bootstrap). So 100,000 pairs take about a second.

Light at import: numpy is imported inside the functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

N_BOOT = 1000  # resamples per CI, as moola_core.metrics
LEVEL = 0.95
MAX_GRID = 4096  # distinct values above which a bootstrap mean works on a value grid


@dataclass
class Estimate:
    """A figure with its bootstrap CI."""

    value: float
    ci_low: float
    ci_high: float

    def fmt(self, digits: int = 3, signed: bool = False) -> str:
        sign = "+" if signed else ""
        return (
            f"{self.value:{sign}.{digits}f} [{self.ci_low:{sign}.{digits}f}, "
            f"{self.ci_high:{sign}.{digits}f}]"
        )


# --- bootstrap ---------------------------------------------------------------------------------


def _rng(seed: int):
    import numpy as np

    return np.random.default_rng(seed)


def _interval(boot, level: float) -> tuple[float, float]:
    import numpy as np

    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return float(low), float(high)


def boot_mean(values, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """Mean of `values` with a percentile-bootstrap CI (multinomial over distinct values)."""
    import numpy as np

    values = np.asarray(values, dtype=float).reshape(-1)
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan)
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(uniq) > MAX_GRID:
        # the grid keeps each bin's mean value, so the full-sample mean is unchanged
        edges = np.linspace(values.min(), values.max(), MAX_GRID + 1)
        bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, MAX_GRID - 1)
        counts = np.bincount(bins, minlength=MAX_GRID)
        sums = np.bincount(bins, weights=values, minlength=MAX_GRID)
        keep = counts > 0
        uniq, counts = sums[keep] / counts[keep], counts[keep]
    rng = _rng(seed)
    draws = rng.multinomial(n, counts / n, size=n_boot)  # [B, K]
    boot = draws @ uniq / n
    low, high = _interval(boot, level)
    return Estimate(float(values.mean()), low, high)


def boot_quantile(
    values, q: float, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> Estimate:
    """The q-quantile of `values` with a percentile-bootstrap CI.

    A resample's k-th smallest value is the original's value at rank ceil(n * U), U ~ Beta(k,
    n - k + 1) (the k-th of n uniform order statistics), so no resample is ever materialised.
    """
    import numpy as np

    values = np.sort(np.asarray(values, dtype=float).reshape(-1))
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan)
    k = min(n, max(1, math.ceil(q * n)))
    u = _rng(seed).beta(k, n - k + 1, size=n_boot)
    ranks = np.clip(np.ceil(u * n).astype(np.int64) - 1, 0, n - 1)
    low, high = _interval(values[ranks], level)
    return Estimate(float(np.quantile(values, q)), low, high)
