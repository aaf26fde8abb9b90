"""Paired statistics of the MBRL report with the training seed as the unit of replication.

A comparison ``A / B`` of one task has, per training seed ``s``, the paired test returns
``a_s, b_s (n_s,)`` (the same seeded episodes). The verdicts use

- the ratio of means per seed ``r_s = mean(a_s) / mean(b_s)``: mean and Student-t interval over seeds;
- a two-stage paired bootstrap of the pooled ratio: resample seeds with replacement, then the
  episode pairs within each drawn seed (:func:`bootstrap_ratio_seeds`);
- the difference of means per seed ``mean(a_s - b_s)``: mean and t-interval over seeds.

Intervals over the pooled episodes (every pair treated as independent) are kept as a secondary,
labelled column. A verdict needs at least :data:`MIN_SEEDS` seeds with :data:`MIN_EPISODES`
episodes each; smaller comparisons are reported as "no verdict".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dcem.experiments.common.runs import mean_ci95

__all__ = ["MIN_EPISODES", "MIN_SEEDS", "bootstrap_ratio_seeds", "compare", "enough"]

MIN_SEEDS, MIN_EPISODES = 3, 20


def enough(arrays: Sequence[np.ndarray]) -> bool:
    """Whether a comparison may carry a verdict (>= 3 seeds x >= 20 paired episodes)."""
    return len(arrays) >= MIN_SEEDS and min(a.size for a in arrays) >= MIN_EPISODES


def bootstrap_ratio_seeds(
    num: Sequence[np.ndarray], den: Sequence[np.ndarray], gen: np.random.Generator, n_boot: int = 2000
) -> tuple[float, float]:
    """95% percentile interval of ``sum(a) / sum(b)`` under a two-stage paired bootstrap.

    Each resample draws ``len(num)`` seeds with replacement, then, within each drawn seed, its
    episode pairs with replacement (the same indices for ``a`` and ``b``). With one seed this is
    the episode bootstrap of that seed. ``num``/``den``: per-seed 1-D arrays of paired returns.
    """
    S = len(num)
    if S == 0 or len(den) != S:
        raise ValueError(f"num and den must hold the same positive number of seeds, got {S}, {len(den)}")
    pick = gen.integers(0, S, size=(n_boot, S))
    sn, sd = np.zeros(n_boot), np.zeros(n_boot)
    for s in range(S):
        a, b = np.asarray(num[s], float), np.asarray(den[s], float)
        idx = gen.integers(0, a.size, size=(n_boot, S, a.size))  # episodes of every drawn slot
        mult = (pick == s)[:, :, None]  # slots that drew seed s
        sn += (a[idx] * mult).sum((1, 2))
        sd += (b[idx] * mult).sum((1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.nanpercentile(sn / sd, [2.5, 97.5])
    return float(q[0]), float(q[1])


def compare(num: Sequence[np.ndarray], den: Sequence[np.ndarray], gen: np.random.Generator,
            n_boot: int = 2000) -> dict:  # fmt: skip
    """Every statistic of one paired comparison (see the module docstring)."""
    ratios = [x.mean() / y.mean() if y.mean() != 0 else math.nan for x, y in zip(num, den)]
    pooled = float(np.concatenate(num).mean() / np.concatenate(den).mean())
    return {"ratio_seeds": mean_ci95(ratios), "ratio_pooled": pooled,
            "ratio_boot_seeds": bootstrap_ratio_seeds(num, den, gen, n_boot),
            "diff_seeds": mean_ci95([float((x - y).mean()) for x, y in zip(num, den)]),
            "diff_pooled": mean_ci95(np.concatenate([x - y for x, y in zip(num, den)])),
            "n": int(sum(x.size for x in num)), "seeds": len(num), "verdict": enough(num)}  # fmt: skip
