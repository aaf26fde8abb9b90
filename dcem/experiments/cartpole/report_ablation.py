"""The tau x latent-size ablation block of ``dcem-exp cartpole mode=report`` (App. C, fig. 6)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dcem.control import CartpoleDx
from dcem.experiments.cartpole.baselines import latent_scores
from dcem.experiments.cartpole.run import _load, _load_decoder, make_controller, read_csv
from dcem.experiments.common.report import ci_cell, md_table
from dcem.experiments.common.runs import RunError

log = logging.getLogger(__name__)

__all__ = ["ablation_block"]


def _cells(root: Path, cfg: DictConfig) -> list[tuple[float, int, int, Path]]:
    from dcem.experiments.cartpole import ablation_cells

    cells = [(tau, nz, seed, root / name) for tau, nz, seed, name in ablation_cells(cfg)]
    for *_, d in cells:
        if not (d / "best.pt").is_file():
            raise RunError(f"report.ablation: {d} is missing (run mode=ablation out_dir={root} to finish it)")
    return cells


@torch.no_grad()
def ablation_block(
    root: Path, rep: DictConfig, x_test: torch.Tensor, base: dict[str, dict], img: Path, val_expert: float
) -> tuple[str, dict[str, Any]]:
    """Score every cell of the ablation in ``root`` on the test states; returns the markdown block
    and the raw scores. Fractions are of the converged expert's return (``base["converged"]``);
    ``val_expert`` is its validation cost (the line in the plot)."""
    from dcem.experiments.cartpole.plots import plot_ablation
    from dcem.experiments.common import plots

    if not (root / "config.yaml").is_file():
        raise RunError(f"report.ablation={root}: not a cartpole ablation run folder (no config.yaml)")
    cfg = OmegaConf.load(root / "config.yaml")
    if "seeds" not in cfg.ablation:
        raise RunError(f"report.ablation={root}: made by an older version (no ablation.seeds); rerun it")
    expert = np.asarray(base["converged"]["best"])
    dx, seeds = CartpoleDx(), [int(s) for s in rep.eval_seeds]
    results, curves, raw = [], {}, {}
    for tau, nz, seed, d in _cells(root, cfg):
        cfg_s = OmegaConf.merge(cfg, {"seed": seed})
        ctrl = make_controller(cfg_s, dx, nz, tau)
        best = _load_decoder(ctrl, d / "best.pt")
        sc = latent_scores(ctrl, x_test, seeds)
        cost, cost_best = np.mean(sc["mean"], 0), np.mean(sc["best"], 0)
        raw[d.name] = {
            "best_iter": int(best["iter"]),
            "test_cost": cost.tolist(),
            "test_cost_best": cost_best.tolist(),
        }
        results.append(
            {
                "name": d.name,
                "temp": tau,
                "n_latent": nz,
                "seed": seed,
                "frac": float(cost.mean() / expert.mean()),
                "frac_best": float(cost_best.mean() / expert.mean()),
                "best_iter": int(best["iter"]),
            }
        )
        curves[d.name] = read_csv(d / "log.csv")
    n_iter = int(_load(root / results[0]["name"] / "checkpoint.pt")["iter"])
    rows = []
    for nz in cfg.ablation.latent_sizes:
        for tau in cfg.ablation.temps:
            cell = [r for r in results if r["n_latent"] == int(nz) and r["temp"] == float(tau)]
            rows.append(
                [
                    f"{float(tau):g}" + (" (hard CEM)" if float(tau) == 0 else ""),
                    int(nz),
                    ci_cell([r["frac"] for r in cell], pct=True),
                    ", ".join(f"{100 * r['frac']:.0f} %" for r in cell),
                    ci_cell([r["frac_best"] for r in cell], pct=True),
                    f"{np.mean([r['best_iter'] for r in cell]):.0f}",
                ]
            )
    with plots.style():
        label = "converged expert (val.)"
        plot_ablation(results, curves, val_expert, img / "cartpole_ablation.png", expert_label=label)
    head = (
        f"`{root}`: {len(cfg.ablation.seeds)} training seeds x temps {list(cfg.ablation.temps)} x latent "
        f"sizes {list(cfg.ablation.latent_sizes)}, {n_iter} decoder updates each; best-validation checkpoint,"
        f" test states, DCEM sampling seeds {seeds}.\n\n"
    )
    table = md_table(
        [
            "tau",
            "latent size",
            "fraction of converged return, mean selection (95% CI over seeds)",
            "per seed",
            "best-sample selection",
            "mean best update",
        ],
        rows,
    )
    return head + table, raw
