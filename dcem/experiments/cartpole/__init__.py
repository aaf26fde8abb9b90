"""Cartpole with a latent action space learned through DCEM (sect. 5.2.1, App. C, Alg. 2, fig. 3).

``dcem-exp cartpole [key=value ...]`` (or ``python -m dcem.experiments cartpole ...``) with the
Hydra config ``conf/config.yaml`` next to this file. Modes:

- ``mode=train``: Alg. 2 (sample an initial state, solve the embedded problem with DCEM over
  the 2-D latent box, step the decoder on the plan's cost), validation on 100 fixed initial
  states against the full-space CEM expert, then the plots (``curves.png``, ``fig3.png``,
  ``surface.png``) and ``summary.json`` (expert cost, latent cost, improvement factor, random
  decoder cost). Interrupted runs resume from ``out_dir/checkpoint.pt``.
- ``mode=ablation``: the same for every ``tau`` in ``ablation.temps`` and latent size in
  ``ablation.latent_sizes`` (sub-runs under ``out_dir/tau<..>_nz<..>``), ``ablation.csv`` and
  ``ablation.png``.
- ``mode=vis``: redo the plots of the run in ``out_dir`` from its best checkpoint.
- ``mode=eval``: recompute ``summary.json`` of the run in ``out_dir`` and of its sub-runs.

The checkpoint kept (``best.pt``) is the one with the lowest validation cost; ``summary.json``
also reports a held-out test set of 100 other initial states (``*_test_*``).

The improvement factor is ``latent cost / expert cost``: both costs are negative (rewards of
an upright pole), so it equals the ratio of returns, and > 1 means the latent controller with
10x fewer samples beats the expert.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dcem.experiments._config import compose_config

__all__ = ["main", "load_config"]

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parent / "conf"


def load_config(argv: list[str]) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides ``key=value``."""
    return compose_config(CONF_DIR, argv)


def _plots(cfg: DictConfig, run_dir: Path, n_latent: int | None = None, temp: float | None = None) -> dict:
    from dcem.control import CartpoleDx
    from dcem.experiments.cartpole.plots import plot_curves, plot_fig3, plot_surface
    from dcem.experiments.cartpole.run import (
        make_controller,
        make_expert,
        read_csv,
        validation_states,
    )

    dx = CartpoleDx()
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    ctrl = make_controller(cfg, dx, ck.get("n_latent", n_latent), ck.get("temp", temp) or 0.0)
    best = torch.load(run_dir / "best.pt", weights_only=False)
    ctrl.decoder.load_state_dict(best["decoder"])
    summary = (
        json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    )
    expert = (
        json.loads((run_dir / "expert.json").read_text())["costs"]
        if (run_dir / "expert.json").exists()
        else None
    )
    expert_mean = float(torch.tensor(expert).mean()) if expert else summary.get("expert_cost", float("nan"))
    rows = read_csv(run_dir / "log.csv")
    plot_curves(rows, expert_mean, ck.get("random_cost"), run_dir / "curves.png")
    x_val = validation_states(cfg, dx)
    k = int(cfg.vis.n_states)
    plot_surface(ctrl, x_val[:k], run_dir / "surface.png", grid=int(cfg.vis.grid))
    return plot_fig3(ctrl, make_expert(cfg, dx), x_val[0], run_dir / "fig3.png", n_lines=int(cfg.vis.n_lines))


def main(argv: list[str]) -> None:
    """Entry point of ``dcem-exp cartpole``; see the module docstring."""
    from dcem.experiments.cartpole.run import (
        expert_costs,
        read_csv,
        test_states,
        train,
        validation_states,
    )

    cfg = load_config(argv)
    if cfg.mode not in ("train", "ablation", "vis", "eval"):
        raise ValueError(f"mode must be train, ablation, vis or eval, got {cfg.mode!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(int(cfg.num_threads))
    run_dir = Path(cfg.out_dir) if cfg.out_dir else Path("runs/cartpole") / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    log.info("run folder %s", run_dir)

    if cfg.mode == "vis":
        _plots(cfg, run_dir)
        return
    if cfg.mode == "eval":
        from dcem.experiments.cartpole.run import summarize

        for d in [run_dir, *sorted(p for p in run_dir.iterdir() if p.is_dir())]:
            if (d / "checkpoint.pt").exists():
                log.info("%s: %s", d.name, json.dumps(summarize(cfg, d)))
        return
    if cfg.mode == "train":
        summary = train(cfg, run_dir)
        if cfg.plots:
            summary.update(_plots(cfg, run_dir))
        log.info("summary: %s", json.dumps(summary))
        return

    from dcem.control import CartpoleDx
    from dcem.experiments.cartpole.plots import plot_ablation

    dx = CartpoleDx()
    expert = expert_costs(cfg, dx, validation_states(cfg, dx), run_dir / "expert.json")
    expert_test = expert_costs(cfg, dx, test_states(cfg, dx), run_dir / "expert_test.json", tag="test")
    results, curves = [], {}
    for nz in cfg.ablation.latent_sizes:
        for tau in cfg.ablation.temps:
            name = f"tau{float(tau):g}_nz{int(nz)}"
            sub = run_dir / name
            s = train(
                cfg,
                sub,
                n_latent=int(nz),
                temp=float(tau),
                n_train_iter=int(cfg.ablation.n_train_iter),
                expert=expert,
                expert_test=expert_test,
            )
            s["name"] = name
            results.append(s)
            curves[name] = read_csv(sub / "log.csv")
            log.info(
                "%s: latent %.3f expert %.3f factor %.3f",
                name,
                s["latent_cost"],
                s["expert_cost"],
                s["improvement_factor"],
            )
    with (run_dir / "ablation.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(results[0].keys()))
        w.writeheader()
        w.writerows(results)
    plot_ablation(results, curves, float(expert.mean()), run_dir / "ablation.png")
