"""Hydra multiruns of the experiments: ``dcem-exp NAME -m key=a,b ...`` on Hydra's launchers.

Every experiment composes its typed config with Hydra's compose API (:mod:`.config`); a sweep
hands the same overrides to Hydra's sweeper and launcher instead, and each job runs
``dcem-exp NAME <its overrides> out_dir=<its folder>`` in the launcher's worker:

- the sweep is expanded and every job's configuration is checked (:func:`.config.load`) before
  anything is launched, so a bad value is one line naming the key, as for a single run;
- the launcher is ``hydra/launcher=joblib`` (local processes, ``hydra.launcher.n_jobs``) unless
  the command line names another: ``hydra/launcher=slurm`` (this package's
  ``conf/hydra/launcher/slurm.yaml``: submitit on SLURM; ``hydra.launcher.partition``,
  ``timeout_min``, ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``, ...) or ``submitit_local``;
- the jobs' run folders are ``hydra.sweep.dir/<job number>`` (default
  ``multirun/NAME/<timestamp>``); ``dcem-exp gather SWEEP_DIR`` summarises them
  (:mod:`.gather`). Hydra writes no ``.hydra`` folder and leaves logging to the experiments.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MULTIRUN_FLAGS", "expand", "multirun", "split"]

MULTIRUN_FLAGS = ("-m", "--multirun")
CONF = Path(__file__).resolve().parent / "conf"


def split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(task overrides, hydra overrides)``: ``hydra.*``/``hydra/*`` keys go to Hydra."""
    hydra = [a for a in argv if a.split("=", 1)[0].lstrip("+~").startswith(("hydra.", "hydra/"))]
    return [a for a in argv if a not in hydra and a not in MULTIRUN_FLAGS], hydra


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """The overrides of every job of the sweep (Hydra's basic sweeper: the cartesian product)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dcem.experiments.common.config import ConfigError

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as err:  # noqa: BLE001 - Hydra's grammar errors have no common base
        raise ConfigError(f"bad sweep override: {str(err).strip().splitlines()[0]}") from None
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _defaults(name: str, task: list[str], hydra: list[str]) -> list[str]:
    keys = {a.split("=", 1)[0] for a in hydra}
    out = [f"hydra.searchpath=['file://{CONF}']", "hydra.output_subdir=null", f"hydra.job.name={name}",
           "hydra/job_logging=none", "hydra/hydra_logging=none"]  # fmt: skip
    if "hydra/launcher" not in keys:
        out.append("hydra/launcher=joblib")
    if "hydra.sweep.dir" not in keys:
        out.append(f"hydra.sweep.dir=multirun/{name}/" + "${now:%Y%m%d-%H%M%S}")
    if "hydra.sweep.subdir" not in keys:
        out.append("hydra.sweep.subdir=${hydra.job.num}")
    return out


def _job(name: str, argv: list[str]) -> None:
    """One job of the sweep, in the launcher's worker: the experiment on the job's overrides."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from dcem.experiments.__main__ import main

    hc = HydraConfig.get()
    job = list(hc.overrides.task)
    if not any(a.startswith("out_dir=") for a in job):
        job.append(f"out_dir={hc.runtime.output_dir}")
    if not any(a.startswith("progress=") for a in argv):
        job.append("progress=false")  # parallel jobs: no interleaved progress bars
    gh = GlobalHydra.instance()
    saved = gh.hydra
    gh.clear()  # the experiment composes its config with Hydra's compose API
    try:
        main([name, *job])
    finally:
        gh.clear()
        if saved is not None:
            gh.initialize(saved)


def multirun(name: str, argv: Sequence[str]) -> None:
    """``dcem-exp NAME -m ARGV``: check every job, then launch the sweep with Hydra.

    Raises:
        ConfigError: a bad override of any job (nothing is launched).
    """
    import hydra

    from dcem.experiments.common.config import load

    exp = importlib.import_module(f"dcem.experiments.{name}").EXPERIMENT
    task, hyd = split(argv)
    jobs = expand(task)
    for job in jobs:
        load(exp, job)
    task_fn = hydra.main(config_path=str(exp.conf_dir), config_name="config", version_base=None)(
        lambda cfg: _job(name, list(argv))
    )
    from hydra.core.global_hydra import GlobalHydra

    saved = sys.argv
    sys.argv = [f"dcem-exp {name}", "-m", *task, *hyd, *_defaults(name, task, hyd)]
    try:
        task_fn()
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
