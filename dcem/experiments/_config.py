"""Hydra composition shared by the experiments (``dcem-exp NAME key=value ...``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig


def compose_config(conf_dir: Path, overrides: Sequence[str] | None = None) -> DictConfig:
    """Compose ``conf_dir/config.yaml`` with Hydra ``overrides`` (e.g. ``["scale=paper"]``).

    A config group option that does not exist (``scale=huge``) or a malformed or unknown key
    raises ``ValueError`` listing the options of every config group, before any work starts.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            return compose(config_name="config", overrides=list(overrides or []))
    except MissingConfigException as err:
        groups = {
            d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(conf_dir.iterdir()) if d.is_dir()
        }
        choices = "; ".join(f"{g} must be one of {opts}" for g, opts in groups.items())
        raise ValueError(f"{err}\n  {choices}") from err
    except ConfigCompositionException as err:
        raise ValueError(f"bad override: {err}") from err
