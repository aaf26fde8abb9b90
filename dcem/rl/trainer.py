"""Moved: the model-based RL pipeline is application code, now :mod:`dcem.experiments.mbrl.trainer`.

This thin alias keeps old imports working and will be removed; new code imports
:mod:`dcem.experiments.mbrl.trainer` and :func:`dcem.experiments.common.runs.mean_ci95`.
"""

from __future__ import annotations

from collections.abc import Sequence

from dcem.experiments.common.runs import mean_ci95 as _mean_ci95
from dcem.experiments.mbrl.trainer import PHASES, MBRLTrainer, seed_everything, validate_config

__all__ = ["PHASES", "MBRLTrainer", "mean_ci95", "seed_everything", "validate_config"]


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """The old contract of this module: ``ValueError`` for no value, half-width ``0.0`` for one
    (:func:`dcem.experiments.common.runs.mean_ci95` gives ``nan``, the interval being undefined)."""
    if len(values) == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean, half = _mean_ci95(values)
    return (mean, 0.0) if len(values) == 1 else (mean, half)
