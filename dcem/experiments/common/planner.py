"""The planner sections of the experiment configs (``dcem:``, ``expert:``, ``mpc:``, ``planner.cem:``...).

Each section is shaped like :class:`dcem.planning.PlannerConfig`: the keys that name a config
field (``n_sample``, ``n_elite``, ``n_iter``, ``temp``, ``normalize``, ...) become the planner's
config in one place (:func:`planner_config`), the others (``init_sigma``, ``z_bound``,
``shift_fill``, ``latent_bound``) belong to the controller. The keys are those of the run folders
already written (``sigma_scale`` is the config's ``std_scale``; ``temp`` null or 0 is hard CEM), so
older folders resume and report unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dcem.experiments.common.config import ConfigError, opt
from dcem.planning import PlannerConfig
from dcem.planning.config import RENAMED, resolve_config

__all__ = ["PlannerSection", "planner_config", "check_planner_sections"]

#: section keys that configure the planner: the config's fields, their older names and ``temp``
PLANNER_KEYS = frozenset(f.name for f in dataclasses.fields(PlannerConfig)) | RENAMED.keys()


@dataclass
class PlannerSection:
    """The sizes every planner section has; an experiment's section adds its own keys."""

    n_sample: int = opt(ge=2)
    n_elite: int = opt(ge=1, doc="<= n_sample of the same section")
    n_iter: int = opt(ge=1)


def _items(section: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(section) and not isinstance(section, type):
        return dataclasses.asdict(section)
    if isinstance(section, DictConfig):
        return dict(OmegaConf.to_container(section, resolve=True))  # type: ignore[arg-type]
    return dict(section)


def planner_config(
    section: Any, *, defaults: Mapping[str, Any] | None = None, **fixed: Any
) -> PlannerConfig:
    """The :class:`~dcem.planning.PlannerConfig` of one config section.

    Args:
        section: a config section (``DictConfig``, schema dataclass or mapping); its keys in
            :data:`PLANNER_KEYS` are used, the others ignored.
        defaults: the controller's defaults, overridden by the section (e.g.
            :data:`dcem.rl.planners.FULL_DEFAULTS`).
        fixed: settings of the experiment that override the section (e.g. ``select="mean"``).

    Example:
        >>> cfg = planner_config({"n_sample": 50, "n_elite": 5, "n_iter": 3, "temp": 0, "z_bound": 1.0})
        >>> cfg.rule.value, cfg.n_sample, cfg.select
        ('cem', 50, 'min')
    """
    kw = {k: v for k, v in _items(section).items() if k in PLANNER_KEYS}
    config, _ = resolve_config("planner_config", (), {**kw, **fixed}, defaults=defaults, warn=False)
    return config


def check_planner_sections(obj: Any, names: Sequence[str]) -> None:
    """Refuse (:class:`ConfigError`) a planner section of the schema object ``obj`` (dotted
    ``names``) whose keys do not make a valid :class:`~dcem.planning.PlannerConfig`."""
    for name in names:
        sec = attrgetter(name)(obj)
        if sec.n_elite > sec.n_sample:
            raise ConfigError(f"{name}.n_elite={sec.n_elite}: must be <= {name}.n_sample ({sec.n_sample})")
        try:
            planner_config(sec)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{name}: {err}") from None
