"""The full-space CEM baselines of ``mode=report`` with their own variance (cartpole and chain).

Every baseline is run once per sampling seed of ``report.baseline_seeds``; its score is reported as
the mean and 95% Student-t interval over those seeds, next to the latent controller's interval over
training seeds. Each run is cached in ``report.cache_dir`` under its settings, the task, the states
and the code version of the dynamics, cost and planner (:func:`~.baselines.code_version`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dcem.experiments.cartpole.baselines import baseline_seeds
from dcem.experiments.cartpole.run import _load, expert_spec, make_task
from dcem.experiments.common.report import ci_cell, md_table
from dcem.experiments.common.runs import RunError

log = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "baselines",
    "reference",
    "zero_plan",
    "run_cfg",
    "convergence_block",
    "baseline_rows",
]

#: the full-space CEM baselines in table order: (name, label, selections)
BASELINES = (
    ("converged", "converged", ("best", "mean")),
    ("expert", "expert of the paper's text (10x the latent samples)", ("mean", "best")),
    ("published", "expert configured in the published code", ("mean", "best")),
    ("same_budget", "at the latent controller's budget", ("mean", "best")),
)


def run_cfg(run: Path) -> DictConfig:
    """The settings of a finished train run: its ``config.yaml``, or for an ablation cell
    ``<root>/tau<t>_nz<n>_seed<k>`` the root's settings with ``seed=k`` (a cell still short of the
    root's ``ablation.n_train_iter`` is refused)."""
    if not (run / "best.pt").is_file():
        raise RunError(f"report.runs: {run} is not a finished train run (no best.pt)")
    if (run / "config.yaml").is_file():
        return OmegaConf.load(run / "config.yaml")
    m = re.fullmatch(r"tau[^_]+_nz\d+_seed(\d+)", run.name)
    if m is None or not (run.parent / "config.yaml").is_file():
        raise RunError(
            f"report.runs: {run} has no config.yaml and is not an ablation cell tau<t>_nz<n>_seed<k>"
        )
    cfg = OmegaConf.merge(OmegaConf.load(run.parent / "config.yaml"), {"seed": int(m.group(1))})
    reached, target = int(_load(run / "checkpoint.pt")["iter"]), int(cfg.ablation.n_train_iter)
    if reached < target:
        raise RunError(
            f"report.runs: {run} is running (update {reached} of {target}); report it once finished"
        )
    return OmegaConf.merge(cfg, {"n_train_iter": target})


def baselines(
    cfg: DictConfig,
    rep: DictConfig,
    x: torch.Tensor,
    tag: str,
    names: tuple[str, ...] | None = None,
    seeds: list[int] | None = None,
) -> dict[str, dict]:
    """Every full-space CEM baseline of :data:`BASELINES` (``expert`` = ``cfg.expert``, ``published`` =
    ``report.published``, ``same_budget`` = the sizes of ``cfg.dcem``) from the states ``x``, once per
    sampling seed of ``report.baseline_seeds`` (or ``seeds``); ``names``: a subset."""
    lat = cfg.dcem
    specs = {
        "converged": expert_spec(rep.converged),
        "expert": expert_spec(cfg.expert),
        "published": expert_spec(rep.published),
        "same_budget": {
            "n_sample": lat.n_sample,
            "n_elite": lat.n_elite,
            "n_iter": lat.n_iter,
            "sigma_scale": cfg.expert.sigma_scale,
        },
    }
    dx, cost = make_task(cfg)
    task = {"chain": OmegaConf.to_container(cfg.chain)} if "chain" in cfg else {}
    key = {
        "task": str(cfg.get("task", "cartpole")),
        **task,
        "n_val": int(cfg.n_val),
        "val_seed": int(cfg.val_seed),
        "set": tag,
    }
    seeds = [int(s) for s in (rep.baseline_seeds if seeds is None else seeds)]
    out = {}
    for name, spec in specs.items():
        if names is None or name in names:
            log.info("full-space CEM %s %s on the %s set, sampling seeds %s", name, dict(spec), tag, seeds)
            out[name] = baseline_seeds(dx, x, int(cfg.horizon), spec, seeds, cost, key, Path(rep.cache_dir))
    return out


def reference(base: dict[str, dict]) -> np.ndarray:
    """Per-state cost ``(n,)`` of the converged full-space CEM (best sample), averaged over its
    sampling seeds: the denominator of every fraction."""
    return np.mean([r["best"] for r in base["converged"]["runs"]], 0)


def zero_plan(cfg: DictConfig, x: torch.Tensor) -> np.ndarray:
    """Costs ``(n,)`` of the do-nothing plan ``u = 0`` from the states ``x``."""
    from dcem.planning import rollout_objective

    dx, cost = make_task(cfg)
    u = torch.zeros(x.shape[0], 1, int(cfg.horizon), dx.n_ctrl)
    return rollout_objective(dx, x, cost)(u)[:, 0].numpy().astype(np.float64)


def seed_fractions(b: dict[str, Any], sel: str, ref: np.ndarray) -> np.ndarray:
    """Per-sampling-seed fraction of the converged return ``(n_seeds,)`` of baseline ``b``."""
    return np.array([np.mean(r[sel]) / ref.mean() for r in b["runs"]])


def baseline_rows(base: dict[str, dict], ref: np.ndarray, zero: np.ndarray) -> list[list[str]]:
    """Rows: full-space CEM, samples x elites x iterations, selection, test cost, fraction of the
    converged return (mean ± 95% CI over sampling seeds, and per seed), gain over ``u = 0``."""
    rows = []
    gain = float(zero.mean() - ref.mean())
    for name, label, sels in BASELINES:
        if name not in base:
            continue
        b, s = base[name], base[name]["spec"]
        for sel in sels:
            fr = seed_fractions(b, sel, ref)
            gn = np.array([(zero.mean() - np.mean(r[sel])) / gain for r in b["runs"]])
            rows.append(
                [
                    f"full-space CEM, {label}",
                    f"{s['n_sample']} x {s['n_elite']} x {s['n_iter']}",
                    sel,
                    ci_cell([np.mean(r[sel]) for r in b["runs"]]),
                    ci_cell(fr, pct=True),
                    ", ".join(f"{100 * v:.1f} %" for v in fr),
                    ci_cell(gn, pct=True),
                ]
            )
    rows.append(
        [
            "u = 0 (do nothing)",
            "0",
            "-",
            f"{zero.mean():.3g}",
            f"{100 * zero.mean() / ref.mean():.1f} %",
            "-",
            "0 %",
        ]
    )
    return rows


BASELINE_HEADERS = [
    "controller",
    "samples x elites x iterations",
    "selection",
    "test cost (mean ± 95% CI over sampling seeds)",
    "fraction of converged return (95% CI over sampling seeds)",
    "per sampling seed",
    "fraction of the converged gain over u = 0",
]


def convergence_block(base: dict[str, dict]) -> str:
    """Per baseline: the spread of its sampling distribution (first -> last iteration) and the gain
    of its best cost over the last quarter of iterations, averaged over its sampling seeds."""
    rows = []
    for name, label, _ in BASELINES:
        if name not in base:
            continue
        b, s = base[name], base[name]["spec"]
        sig = np.mean([r["sigma"] for r in b["runs"]], 0)
        tr = np.mean([r["best_trace"] for r in b["runs"]], 0)
        q = max(1, len(tr) // 4)
        rows.append(
            [
                label,
                f"{s['n_sample']} x {s['n_elite']} x {s['n_iter']}",
                str(b["seeds"]),
                ci_cell([np.mean(r["mean"]) for r in b["runs"]]),
                ci_cell([np.mean(r["best"]) for r in b["runs"]]),
                f"{sig[0]:.3g} -> {sig[-1]:.3g}",
                f"{tr[-1 - q] - tr[-1]:.3f}",
            ]
        )
    return md_table(
        [
            "full-space CEM",
            "samples x elites x iterations",
            "sampling seeds",
            "test cost, final mean (± 95% CI over seeds)",
            "test cost, best sample",
            "mean std, first -> last iteration",
            "best-cost gain in the last quarter of iterations",
        ],
        rows,
    )
