"""The resumable closed loop of the pendulum experiment (checkpoints and ``log.csv``)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from dcem.experiments.common.planner import planner_config
from dcem.experiments.common.runs import CsvLog, incompatible, load_torch, note_progress, save_torch

__all__ = ["LOG_FIELDS", "simulate"]

LOG_FIELDS = ["step", "mean_cost", "mean_plan_cost", "frac_upright", "mean_abs_angle", "wall_s"]


def _controller(cfg: DictConfig, generator: torch.Generator) -> tuple[Any, Any]:
    from dcem.control import MPC, PendulumDx
    from dcem.control.mpc import MPC_DEFAULTS

    dx = PendulumDx()
    config = planner_config(cfg.mpc, defaults=MPC_DEFAULTS)  # temp null: CEM, else DCEM
    ctrl = MPC(int(cfg.horizon), dx, config=config, shift_fill=str(cfg.mpc.shift_fill), generator=generator)
    return dx, ctrl


def _row(step: int, x: Tensor, costs: list[Tensor], plan_costs: list[Tensor], wall: float) -> dict[str, Any]:
    th = torch.atan2(x[:, 1], x[:, 0])
    return {"step": step, "mean_cost": float(torch.stack(costs[-1:]).mean()) if costs else math.nan,
            "mean_plan_cost": float(torch.stack(plan_costs[-1:]).mean()) if plan_costs else math.nan,
            "frac_upright": float((th.abs() < 0.2).float().mean()), "mean_abs_angle": float(th.abs().mean()),
            "wall_s": wall}  # fmt: skip


def _restore(path: Path, cfg: DictConfig, g: torch.Generator) -> dict[str, Any]:
    ck = load_torch(path)
    want = (int(cfg.n_systems), 3)
    if not isinstance(ck, dict) or "x" not in ck or tuple(ck["x"][0].shape) != want:
        raise incompatible(path, f"not a pendulum checkpoint of {want[0]} systems")
    try:
        g.set_state(ck["gen"])
    except (RuntimeError, TypeError, KeyError) as err:
        raise incompatible(path, f"generator state: {err}") from None
    return ck


@torch.no_grad()
def simulate(cfg: DictConfig, run_dir: Path) -> tuple[dict[str, Tensor], float, float]:
    """Run (or resume) the closed loop for ``cfg.n_steps`` steps.

    Returns:
        ``({"x" (T+1, B, 3), "u" (T, B, 1), "plan_cost" (T, B), "cost" (T, B)}, wall seconds, dt)``.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(int(cfg.seed))
    dx, ctrl = _controller(cfg, g)
    x0 = dx.sample_state(int(cfg.n_systems), g)
    path, csv_log = run_dir / "checkpoint.pt", CsvLog(run_dir / "log.csv", LOG_FIELDS)
    xs, us, pcs, cs, warm, wall = [x0], [], [], [], None, 0.0
    if path.exists():
        ck = _restore(path, cfg, g)
        xs, us, pcs, cs = list(ck["x"]), list(ck["u"]), list(ck["plan_cost"]), list(ck["cost"])
        warm, wall = ck["warm"], float(ck["wall"])
        csv_log.keep(lambda r: r["step"] <= len(us))
    else:
        csv_log.rewrite([_row(0, x0, cs, pcs, 0.0)])
    n_steps, every = int(cfg.n_steps), int(cfg.ckpt_every)
    t0 = time.perf_counter()
    for step in tqdm(range(len(us), n_steps), initial=len(us), total=n_steps, desc="mpc", leave=False,
                     disable=not cfg.progress):  # fmt: skip
        p = ctrl.plan(xs[-1], u_init=warm) if warm is not None else ctrl.plan(xs[-1])
        warm = None  # afterwards the controller's own warm start (the same shifted plan)
        u0 = p.u[0]
        cs.append(ctrl.cost(xs[-1], u0))
        us.append(u0)
        pcs.append(p.cost)
        xs.append(dx.step(xs[-1], u0))
        note_progress(step + 1, "step")
        if (step + 1) % every == 0 or step + 1 == n_steps:
            now = time.perf_counter()
            wall, t0 = wall + now - t0, now
            csv_log.append([_row(step + 1, xs[-1], cs, pcs, wall)])  # rows past a checkpoint are dropped
            save_torch({"x": torch.stack(xs), "u": torch.stack(us), "plan_cost": torch.stack(pcs),
                        "cost": torch.stack(cs), "warm": ctrl.warm_plan, "gen": g.get_state(),
                        "wall": wall}, path)  # fmt: skip
    out = {"x": torch.stack(xs), "u": torch.stack(us), "plan_cost": torch.stack(pcs), "cost": torch.stack(cs)}
    return out, wall, float(dx.dt)
