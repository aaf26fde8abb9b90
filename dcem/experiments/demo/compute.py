"""The computations of the demo: the plotting grid, vanilla CEM with its trace, DCEM solves."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dcem.cem import dcem
from dcem.experiments.demo.objective import BumpObjective, DemoConfig

__all__ = ["CemTrace", "eval_runs", "grid", "grid_argmin", "point", "run_cem", "solve", "surface"]

def grid(cfg: DemoConfig, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Plotting grid: ``xs`` and ``ys`` of shape ``(R,)`` and points of shape ``(R, R, 2)``."""
    xs = torch.linspace(-cfg.bound, cfg.bound, cfg.grid, dtype=dtype)
    gx, gy = torch.meshgrid(xs, xs, indexing="xy")
    return xs, xs.clone(), torch.stack((gx, gy), -1)


@torch.no_grad()
def surface(obj: BumpObjective, pts: Tensor) -> Tensor:
    return obj(pts)


def grid_argmin(z: Tensor, pts: Tensor) -> tuple[float, float]:
    i = int(z.argmin())
    p = pts.reshape(-1, 2)[i]
    return float(p[0]), float(p[1])


def solve(obj: BumpObjective, cfg: DemoConfig, generator: torch.Generator, n_batch: int) -> Tensor:
    """DCEM (``temp = cfg.temp``) minimiser of ``obj``, shape ``(n_batch, 2)``."""
    dtype = obj.centers.dtype
    return dcem(
        obj,
        nx=2,
        n_batch=n_batch,
        n_sample=cfg.dcem_samples,
        n_elite=cfg.dcem_elite,
        n_iter=cfg.dcem_iters,
        temp=cfg.temp,
        lb=-cfg.bound,
        ub=cfg.bound,
        init_mu=torch.tensor(cfg.init_mu, dtype=dtype),
        init_sigma=cfg.init_sigma,
        iter_eps=None,
        generator=generator,
        dtype=dtype,
    )


def eval_runs(obj: BumpObjective, cfg: DemoConfig, seed: int) -> Tensor:
    """DCEM outputs of ``cfg.dcem_batch`` runs with fixed noise (the same before and after), ``(B, 2)``."""
    g = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        return solve(obj, cfg, g, cfg.dcem_batch)


def point(x: Tensor) -> tuple[float, float]:
    return float(x[0]), float(x[1])


@dataclass
class CemTrace:
    X: list[Tensor] = field(default_factory=list)  # samples (n_sample, 2) per iteration
    elite: list[Tensor] = field(default_factory=list)  # bool (n_sample,)
    mu_before: list[Tensor] = field(default_factory=list)
    mu_after: list[Tensor] = field(default_factory=list)
    sigma_before: list[Tensor] = field(default_factory=list)  # (2,) std of the sampling distribution


def run_cem(obj: BumpObjective, cfg: DemoConfig, seed: int) -> tuple[CemTrace, Tensor]:
    trace = CemTrace()
    mu0 = torch.tensor(cfg.init_mu, dtype=obj.centers.dtype)
    trace.mu_before.append(mu0)
    trace.sigma_before.append(torch.full((2,), cfg.init_sigma, dtype=mu0.dtype))

    def cb(i: int, X: Tensor, fX: Tensor, I: Tensor, X_I: Tensor, mu: Tensor, sigma: Tensor) -> None:
        trace.X.append(X[0].detach().clone())
        trace.elite.append(I[0, :, 0].detach() > 0.5)
        trace.mu_after.append(mu[0].detach().clone())
        trace.mu_before.append(mu[0].detach().clone())
        trace.sigma_before.append(sigma[0].detach().clone())

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = dcem(
            obj,
            nx=2,
            n_sample=cfg.cem_samples,
            n_elite=cfg.cem_elite,
            n_iter=cfg.cem_iters,
            temp=None,
            lb=-cfg.bound,
            ub=cfg.bound,
            init_mu=mu0,
            init_sigma=cfg.init_sigma,
            iter_eps=None,
            iter_cb=cb,
            generator=g,
        )
    return trace, x[0]
