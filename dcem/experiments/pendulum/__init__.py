"""Pendulum swing-up with the receding-horizon CEM controller (``dcem-exp pendulum``).

``dcem-exp pendulum [scale=short|tiny] [key=value ...]``: a batch of pendulums
(``dcem.control.PendulumDx``, torque in [-2, 2]) starts from random angles and velocities;
:class:`dcem.control.MPC` plans over ``horizon`` steps with the quadratic tracking cost of
``mpc.pytorch`` (goal upright), applies the first action and warm-starts the next plan with the
shifted one. ``scale=tiny`` is a seconds-long run. Writes into ``out_dir`` (default
``runs/pendulum/<timestamp>``):

- ``config.yaml`` (written once), ``log.csv`` (one row every ``ckpt_every`` steps: mean step
  cost, fraction upright, mean |angle|), ``checkpoint.pt`` (states, actions, the warm-start plan
  and the generator; an interrupted run resumes from it exactly);
- ``trajectories.png`` (angle, velocity, torque), ``trajectories.pt``, ``summary.json`` and, if
  ``animate``, ``swingup.gif``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from dcem.experiments.common.config import Experiment, load
from dcem.experiments.pendulum.schema import PendulumConfig

__all__ = ["EXPERIMENT", "main", "load_config", "run"]

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parent / "conf"
EXPERIMENT = Experiment(
    "pendulum", CONF_DIR, PendulumConfig, __doc__ or "",
    free_keys=("out_dir", "progress", "num_threads", "resume", "animate", "n_animate"),
)  # fmt: skip

#: a pendulum counts as upright when its angle is within this many radians of the top
UPRIGHT = 0.2


def load_config(argv: list[str]) -> DictConfig:
    """The typed, validated configuration for Hydra overrides ``key=value``."""
    cfg = load(EXPERIMENT, argv)
    if cfg is None:
        raise ValueError("load_config does not take --help")
    return cfg


def run(cfg: DictConfig) -> dict:
    """Simulate (resuming from ``checkpoint.pt``), plot, animate; returns ``summary.json``'s dict."""
    from dcem.experiments.common.runs import atomic_write_text, open_run, save_torch, set_threads
    from dcem.experiments.pendulum.loop import simulate
    from dcem.experiments.pendulum.plots import animate, plot_trajectories

    set_threads(cfg.num_threads)
    run_dir = open_run("pendulum", cfg, EXPERIMENT.free_keys, resume=bool(cfg.resume))
    log.info("run folder %s", run_dir)
    out, wall, dt = simulate(cfg, run_dir)
    save_torch(out, run_dir / "trajectories.pt")
    plot_trajectories(out["x"], out["u"], dt, run_dir / "trajectories.png")
    if cfg.animate:
        try:
            animate(out["x"], dt, run_dir / "swingup.gif", n=int(cfg.n_animate))
        except ImportError as err:  # pillow missing
            log.warning("animation skipped: %s", err)
    tail = out["x"][-10:, :, 0]
    summary = {
        "n_systems": int(cfg.n_systems),
        "n_steps": int(cfg.n_steps),
        "frac_upright_last_10_steps": float((tail > math.cos(UPRIGHT)).all(0).float().mean()),
        "mean_step_cost": float(out["cost"].mean()),
        "wall_s": wall,
        "s_per_mpc_step": wall / int(cfg.n_steps),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    log.info("summary: %s", json.dumps(summary))
    return summary


def main(argv: list[str]) -> None:
    """Entry point of ``dcem-exp pendulum`` (``--help`` lists every key)."""
    from dcem.experiments.common.runs import setup_logging

    cfg = load(EXPERIMENT, argv)
    if cfg is None:
        return
    setup_logging()
    run(cfg)
