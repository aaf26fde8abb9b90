"""Energy-based regression with unrolled gradient descent vs DCEM (paper sect. 4.1, 5.1, app. B).

``dcem-exp regression [scale=short|paper|tiny] [key=value ...]`` trains an energy network
``E_theta(x, y)`` on ``y = x sin x`` with both unrolled inner optimisers for every seed in
``seeds``, then writes tables and figures into ``out_dir`` (default
``runs/regression/<timestamp>``; pointing ``out_dir`` at an existing run with the same
configuration resumes it; ``resume=false`` moves it aside and starts over):

- ``config.yaml``: the resolved configuration (written once);
- ``{gd,dcem}/seed<k>/log.csv``, ``ckpt.pt``, ``model.pt``: per-run logs and checkpoints;
- ``summary.csv``, ``ablation.csv``, ``results.json``, ``summary.md``: final metrics;
- ``loss_curves.png``, ``energy_surfaces.png`` (fig. 2), ``energy_surfaces_all_seeds.png``,
  ``ablation_mse.png``, ``ablation_predictions.png`` (app. B).

Scales: ``short`` (default, 1000 updates), ``paper`` (100k updates, the reference protocol),
``tiny`` (seconds, a smoke test).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dcem.experiments.common.config import Experiment
from dcem.experiments.common.config import load as _load
from dcem.experiments.regression.schema import RegressionConfig

__all__ = ["EXPERIMENT", "main", "load_config", "run"]

log = logging.getLogger(__name__)

EXPERIMENT = Experiment(
    "regression", Path(__file__).resolve().parent / "conf", RegressionConfig, __doc__ or "",
    free_keys=("out_dir", "progress", "num_threads", "resume", "analyse", "device", "mode", "report."),
)  # fmt: skip


def load_config(overrides: list[str] | None = None) -> Any:
    """The typed, validated configuration for Hydra ``overrides`` (e.g. ``["scale=paper"]``)."""
    cfg = _load(EXPERIMENT, overrides or [])
    if cfg is None:
        raise ValueError("load_config does not take --help")
    return cfg


def run(cfg: Any) -> dict[str, Any]:
    """Train every ``(method, seed)`` (resuming finished or interrupted runs) and analyse them.

    Returns:
        the aggregates written to ``results.json`` (empty when ``analyse=false``).
    """
    from omegaconf import OmegaConf

    from dcem.experiments.common.distributed import is_main, launch_info
    from dcem.experiments.common.runs import open_run, require_scipy, set_threads
    from dcem.experiments.regression.analysis import analyse
    from dcem.experiments.regression.train import train_run

    if cfg.analyse:
        require_scipy("dcem-exp regression (analyse=true)")
    set_threads(cfg.num_threads)
    bs_key = "train.batch_size" if cfg.train.batch_size is not None else "n_points"  # null: all points
    launch = launch_info({bs_key: cfg.train.batch_size or cfg.n_points})
    out_dir = open_run("regression", cfg, EXPERIMENT.free_keys, resume=bool(cfg.resume), launch=launch)
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    log.info("regression: writing to %s", out_dir)

    runs = []
    for m in plain["methods"]:
        for s in plain["seeds"]:
            r = train_run(plain, m, int(s), out_dir / m / f"seed{s}", progress=bool(plain["progress"]))
            log.info("%s seed %s: train MSE %.4g, held-out MSE %.4g (%d updates, %.0f s)",
                     m, s, r["train_mse"], r["test_mse"], r["steps"], r["wall_s"])  # fmt: skip
            runs.append(r)
    if not plain["analyse"] or not is_main():  # under torchrun rank 0 analyses
        return {}
    results = analyse(plain, out_dir, runs)
    log.info("regression: summary\n%s", (out_dir / "summary.md").read_text())
    return results


def main(argv: list[str]) -> None:
    """CLI entry point: ``dcem-exp regression [overrides...]`` (``--help`` lists every key)."""
    from dcem.experiments.common.runs import setup_logging

    cfg = _load(EXPERIMENT, argv)
    if cfg is None:
        return
    setup_logging()
    if cfg.mode == "report":
        from dcem.experiments.regression.report import report

        report(cfg)
        return
    run(cfg)
