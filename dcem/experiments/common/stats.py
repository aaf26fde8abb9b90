"""Confidence intervals of the experiments' reports: Student-t (SciPy) and a paired bootstrap."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dcem.experiments.common.rundir import RunError

__all__ = ["bootstrap_ratio", "mean_ci95", "require_scipy", "t_quantile"]


def require_scipy(what: str) -> None:
    """Fail before any work when SciPy (the Student-t quantiles) is missing."""
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        raise RunError(f"{what} needs SciPy for its confidence intervals: pip install scipy")


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile ``t_{(1 + level) / 2, df}`` (SciPy); ``nan`` for ``df < 1``."""
    if df < 1:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def mean_ci95(values: Sequence[float] | Any) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% Student-t interval (``nan`` half-width for one
    value, ``(nan, nan)`` for none)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan
    return float(v.mean()), t_quantile(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)


def bootstrap_ratio(
    num: Sequence[Any], den: Sequence[Any], gen: Any, n_boot: int = 2000
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the pooled ratio of means ``sum(num) / sum(den)``.

    ``num`` and ``den`` are lists of paired 1-D arrays (one per group, e.g. per training seed);
    each group's pairs are resampled with replacement ``n_boot`` times from the NumPy generator
    ``gen`` (``numpy.random.Generator``). Returns the 2.5 and 97.5 % percentiles.
    """
    import numpy as np

    idx = [gen.integers(0, len(a), size=(n_boot, len(a))) for a in num]
    sn = sum(np.asarray(a)[i].sum(1) for a, i in zip(num, idx))
    sd = sum(np.asarray(b)[i].sum(1) for b, i in zip(den, idx))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.nanpercentile(sn / sd, [2.5, 97.5])
    return float(q[0]), float(q[1])
