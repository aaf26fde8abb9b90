"""Moved: the model-based RL pipeline is application code, now :mod:`dcem.experiments.mbrl.trainer`.

This thin alias keeps old imports working; it will be removed.
"""

from dcem.experiments.mbrl.trainer import PHASES, MBRLTrainer, mean_ci95, seed_everything, validate_config

__all__ = ["PHASES", "MBRLTrainer", "mean_ci95", "seed_everything", "validate_config"]
