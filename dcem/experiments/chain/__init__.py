"""A chain of coupled pendulums with 6 torques: the latent action space where it can matter.

``dcem-exp chain [scale=full|tiny] [mode=train|ablation|vis|eval|report] [key=value ...]`` (or
``python -m dcem.experiments chain ...``). The task: ``chain.n_links`` pendulums coupled by
torsional springs, each driven by its own bounded torque (:class:`dcem.control.PendulumChainDx`,
known and differentiable dynamics, no world model); the cost of a plan from ``x_0`` is
``sum_t -(mean_i cos th_i) + 1e-3 mean_i u_i^2`` over ``horizon`` steps
(:func:`dcem.control.chain_upright_cost`), i.e. raise every pendulum. A plan has
``horizon x n_links`` (default 16 x 6 = 96) numbers, against 20 for the cartpole.

The experiment is the cartpole experiment's pipeline on this task (the same modes, training
loop of Alg. 2, checkpoints, resuming and growing of the training length, and report):

- ``mode=train``: Alg. 2 for one decoder (``decoder.n_latent``, ``dcem.temp``, ``seed``);
- ``mode=ablation``: every ``tau`` in ``ablation.temps`` x latent size in ``ablation.latent_sizes``
  x training seed in ``ablation.seeds`` (sub-runs ``tau<..>_nz<..>_seed<..>``);
- ``mode=vis`` / ``mode=eval``: the curves / the summaries of an existing run again;
- ``mode=report``: the full-space CEM baselines (converged, ``expert`` = 1000 x 10, the latent
  budget 100 x 10; every one with each sampling seed of ``report.baseline_seeds``) and the
  ablation folders ``report.ablation=[DIR,...]`` scored on held-out test states, written into the
  generated blocks of ``report.page`` (``docs/results/chain.md``).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dcem.experiments.chain.schema import ChainConfig
from dcem.experiments.common.config import Experiment, load

__all__ = ["EXPERIMENT", "main", "load_config", "make_task"]

CONF_DIR = Path(__file__).resolve().parent / "conf"
EXPERIMENT = Experiment(
    "chain", CONF_DIR, ChainConfig, __doc__ or "",
    free_keys=("out_dir", "progress", "num_threads", "resume", "mode", "plots", "vis.", "report."),
)  # fmt: skip


def make_task(cfg: DictConfig):
    """The chain dynamics of ``cfg.chain`` and the per-step cost (see the module docstring)."""
    from dcem.control import PendulumChainDx, chain_upright_cost

    c = cfg.chain
    params = (10.0, 1.0, 1.0, float(c.coupling))
    dx = PendulumChainDx(int(c.n_links), params=params, max_torque=float(c.max_torque), dt=float(c.dt))
    return dx, chain_upright_cost


def load_config(argv: list[str]) -> DictConfig:
    """The typed, validated configuration for Hydra overrides ``key=value``."""
    cfg = load(EXPERIMENT, argv)
    if cfg is None:
        raise ValueError("load_config does not take --help")
    return cfg


def main(argv: list[str]) -> None:
    """Entry point of ``dcem-exp chain``; see the module docstring (``--help`` lists every key)."""
    from dcem.experiments.cartpole import run_main

    run_main(EXPERIMENT, argv)
