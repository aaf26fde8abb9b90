"""The demo's figures and animation (drawn inside the shared, local plot style)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from dcem.experiments.common import plots
from dcem.experiments.demo.compute import CemTrace
from dcem.experiments.demo.objective import DemoConfig, DemoResult

__all__ = ["plot_cem", "plot_loss", "plot_surfaces", "write_training_gif"]

def _levels(zmin: float, zmax: float, n: int = 24) -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=n).tick_values(zmin, zmax)


def _contour(ax: Any, xs: Tensor, ys: Tensor, z: Tensor, levels: Any) -> Any:
    cs = ax.contourf(xs.numpy(), ys.numpy(), z.numpy(), levels=levels, cmap="viridis", extend="both")
    ax.contour(xs.numpy(), ys.numpy(), z.numpy(), levels=levels[::3], colors="k", linewidths=0.3, alpha=0.4)
    ax.set_aspect("equal")
    return cs


def plot_cem(
    path: Path, cfg: DemoConfig, xs: Tensor, ys: Tensor, z: Tensor, trace: CemTrace, x_cem: Tensor
) -> None:
    from matplotlib.patches import Ellipse

    n = len(trace.X)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig = plots.figure(figsize=(2.6 * ncol + 0.9, 2.6 * nrow + 0.6), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
    levels = _levels(float(z.min()), float(z.max()))
    cs = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        cs = _contour(ax, xs, ys, z, levels)
        X, e = trace.X[i].numpy(), trace.elite[i].numpy()
        ax.scatter(X[~e, 0], X[~e, 1], s=9, c="white", edgecolors="0.3", linewidths=0.4, label="samples")
        ax.scatter(X[e, 0], X[e, 1], s=14, c="tab:red", edgecolors="k", linewidths=0.4, label="elites")
        mb, ma, sb = trace.mu_before[i].numpy(), trace.mu_after[i].numpy(), trace.sigma_before[i].numpy()
        ell = Ellipse(mb, 4 * sb[0], 4 * sb[1], fill=False, ec="orange", ls="--", lw=1)
        ell.set_label("sampling $2\\sigma$")
        ax.add_patch(ell)
        ax.plot([mb[0], ma[0]], [mb[1], ma[1]], color="orange", lw=1.2)
        ax.plot(*ma, marker="X", ms=8, color="orange", mec="k", mew=0.6, ls="none", label="new mean")
        ax.set_title(f"iteration {i + 1}")
        ax.set_xlim(-cfg.bound, cfg.bound)
        ax.set_ylim(-cfg.bound, cfg.bound)
        if i % ncol == 0:
            ax.set_ylabel("$x_2$")
        if i >= (nrow - 1) * ncol or i + ncol >= n:
            ax.set_xlabel("$x_1$")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
    fig.colorbar(cs, ax=axes, label="$f(x)$", shrink=0.9)
    fig.suptitle(
        f"Vanilla CEM (hard top-{cfg.cem_elite} of {cfg.cem_samples} samples) on the bump objective: "
        f"solution ({float(x_cem[0]):.2f}, {float(x_cem[1]):.2f})"
    )
    plots.save(fig, path, dpi=cfg.dpi)


def plot_loss(path: Path, cfg: DemoConfig, losses: Tensor) -> None:
    import numpy as np

    fig = plots.figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.subplots()
    y = losses.numpy()
    steps = np.arange(1, len(y) + 1)
    ax.plot(steps, y, color="tab:blue", lw=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("Adam step")
    ax.set_ylabel(r"$\|\hat x(\theta) - x^\star\|^2$ (mean over runs)")
    ax.set_title(f"DCEM ($\\tau$ = {cfg.temp:g}) training loss, {cfg.dcem_batch} DCEM runs per step")
    ax.grid(True, which="both", alpha=0.3)
    plots.save(fig, path, dpi=cfg.dpi)


def _mark(ax: Any, target: Sequence[float], runs: Tensor, grid_min: Sequence[float]) -> None:
    """Target, the DCEM outputs of the evaluation runs ``(B, 2)``, their mean and the grid minimum.

    The four markers differ in shape, size and fill so that each stays visible when they coincide
    (after training they do): a filled star under a hollow ring, a cross and small dots.
    """
    r = runs.numpy()
    ax.plot(*target, marker="*", ms=15, color="gold", mec="k", mew=0.8, ls="none", zorder=3,
            label="target $x^\\star$")  # fmt: skip
    ax.plot(r[:, 0], r[:, 1], marker="o", ms=3.5, color="orangered", mec="k", mew=0.4, ls="none", alpha=0.9,
            zorder=4, label="DCEM outputs")  # fmt: skip
    ax.plot(*r.mean(0), marker="o", ms=24, mfc="none", mec="tab:red", mew=1.8, ls="none", zorder=5,
            label="their mean")  # fmt: skip
    ax.plot(*grid_min, marker="+", ms=34, color="w", mew=1.0, ls="none", zorder=6,
            label="arg min $f$ (grid)")  # fmt: skip


def plot_surfaces(
    path: Path,
    cfg: DemoConfig,
    xs: Tensor,
    ys: Tensor,
    z0: Tensor,
    z1: Tensor,
    runs0: Tensor,
    runs1: Tensor,
    centers0: Tensor,
    centers1: Tensor,
    res: DemoResult,
) -> None:
    from matplotlib.lines import Line2D

    fig = plots.figure(figsize=(9.6, 5.0), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    levels = _levels(min(float(z0.min()), float(z1.min())), max(float(z0.max()), float(z1.max())))
    panels = (
        (z0, runs0, res.initial_minimiser, res.initial_grid_minimiser, "before training"),
        (z1, runs1, res.final_minimiser, res.final_grid_minimiser, f"after {len(res.losses)} Adam steps"),
    )
    cs = None
    for ax, (z, runs, xhat, gmin, title) in zip(axes, panels):
        cs = _contour(ax, xs, ys, z, levels)
        _mark(ax, res.target, runs, gmin)
        d = math.dist(xhat, res.target)
        ax.set_title(f"{title}\nDCEM output ({xhat[0]:.2f}, {xhat[1]:.2f}), {d:.3f} from target")
        ax.set_xlabel("$x_1$")
        ax.set_xlim(-cfg.bound, cfg.bound)
        ax.set_ylim(-cfg.bound, cfg.bound)
    # where the bump centres went
    arrow = {"arrowstyle": "->", "color": "w", "lw": 1.2}
    for (a, b), (c, d) in zip(centers0.tolist(), centers1.tolist()):
        if math.dist((a, b), (c, d)) > 0.05:
            axes[1].annotate("", xy=(c, d), xytext=(a, b), arrowprops=arrow)
    c0 = centers0.numpy()
    axes[1].plot(
        c0[:, 0],
        c0[:, 1],
        marker="o",
        ms=5,
        mfc="none",
        mec="w",
        mew=1,
        ls="none",
        label="initial bump centres (arrows: where they moved)",
    )
    axes[0].set_ylabel("$x_2$")
    handles, labels = axes[1].get_legend_handles_labels()
    handles[-1] = Line2D([], [], marker="o", ms=5, mfc="none", mec="k", mew=1, ls="none")  # visible on white
    handles = [Line2D([], [], marker="+", ms=12, color="k", mew=1.2, ls="none") if lb.startswith("arg min")
               else h for h, lb in zip(handles, labels)]  # the white cross, visible on the legend's white
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    fig.colorbar(cs, ax=axes, label="$f_\\theta(x)$", shrink=0.9)
    fig.suptitle(f"Learning the objective's parameters $\\theta$ through DCEM ($\\tau$ = {cfg.temp:g})")
    plots.save(fig, path, dpi=cfg.dpi)


def write_training_gif(
    path: Path,
    cfg: DemoConfig,
    xs: Tensor,
    ys: Tensor,
    frames: list[tuple[int, Tensor, Tensor, tuple[float, float]]],
    target: tuple[float, float],
) -> None:
    """``dcem_training.gif``: the surface and the DCEM outputs at the recorded Adam steps."""
    zmin = min(float(z.min()) for _, z, _, _ in frames)
    zmax = max(float(z.max()) for _, z, _, _ in frames)
    levels = _levels(zmin, zmax)
    fig = plots.figure(figsize=(4.8, 5.0), layout="constrained")
    ax = fig.subplots()
    cs = _contour(ax, xs, ys, frames[0][1], levels)
    fig.colorbar(cs, ax=ax, label="$f_\\theta(x)$", shrink=0.85)
    _mark(ax, target, frames[0][2], frames[0][3])
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
    ax.set_title("DCEM training")
    fig.draw_without_rendering()  # lay out once, then freeze: re-laying out every frame is slow
    fig.set_layout_engine("none")
    images = []
    for step, z, runs, gmin in frames:
        ax.clear()
        _contour(ax, xs, ys, z, levels)
        _mark(ax, target, runs, gmin)
        ax.set_xlim(-cfg.bound, cfg.bound)
        ax.set_ylim(-cfg.bound, cfg.bound)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_title(f"DCEM ($\\tau$ = {cfg.temp:g}) training, Adam step {step}")
        images.append(plots.frame(fig, dpi=min(cfg.dpi, 80)))
    plots.write_gif(path, images, fps=6, hold_last=min(6, len(frames) // 4))
