"""``dcem demo``: the 2-D example of the paper's code release, with plots.

The objective is a small ``nn.Module``: three Gaussian bumps (learnable centres, heights and
widths) on a linear tilt,

    f(x) = t . x - sum_j h_j exp(-||x - c_j||^2 / (2 w_j^2)),   x in [-3, 3]^2.

The demo

1. minimises ``f`` with vanilla CEM (``dcem.dcem(..., temp=None)``) and plots the samples of each
   iteration over the contour of ``f`` (elites highlighted) -> ``cem_iterates.png``;
2. learns the parameters of ``f`` with DCEM (``temp = 1``) so that the DCEM minimiser moves to a
   target point: the loss is the squared distance of the DCEM output to the target, minimised with
   Adam through the unrolled DCEM iterations -> ``dcem_loss.png`` (+ ``dcem_loss.csv``),
   ``dcem_surface.png`` (the surface before and after) and ``dcem_training.gif``.

Use it from Python with :func:`run` or from the command line with ``dcem demo [--out DIR]``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dcem.cem import dcem

__all__ = ["BumpObjective", "DemoConfig", "DemoResult", "add_arguments", "run", "run_from_args"]

logger = logging.getLogger(__name__)

DEFAULT_OUT = "dcem-demo-output"

# default objective: a deep bump lower right (the global minimum), two shallower ones, a gentle tilt
_CENTERS = ((1.4, -1.2), (-1.3, -1.0), (-0.3, 1.6))
_HEIGHTS = (1.5, 0.7, 0.8)
_WIDTHS = (0.7, 0.8, 0.6)
_TILT = (0.08, 0.05)


class BumpObjective(nn.Module):
    """2-D objective of ``m`` Gaussian bumps on a linear tilt, with learnable parameters.

    ``f(x) = tilt . x - sum_j heights_j * exp(-||x - centers_j||^2 / (2 widths_j^2))``.

    Args:
        centers: bump centres, shape ``(m, 2)``.
        heights: bump depths, shape ``(m,)`` (positive values make minima).
        widths: bump standard deviations, shape ``(m,)``, all > 0 (stored as their logarithm).
        tilt: slope of the linear term, shape ``(2,)``.
        dtype: dtype of the parameters (default: the default dtype).

    ``forward(x)`` maps points of shape ``(..., 2)`` to values of shape ``(...)``.
    """

    def __init__(
        self,
        centers: Sequence[Sequence[float]] | Tensor = _CENTERS,
        heights: Sequence[float] | Tensor = _HEIGHTS,
        widths: Sequence[float] | Tensor = _WIDTHS,
        tilt: Sequence[float] | Tensor = _TILT,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        c = torch.as_tensor(centers, dtype=dtype).clone()
        h = torch.as_tensor(heights, dtype=dtype).clone()
        w = torch.as_tensor(widths, dtype=dtype).clone()
        t = torch.as_tensor(tilt, dtype=dtype).clone()
        if c.dim() != 2 or c.shape[-1] != 2 or c.shape[0] < 1:
            raise ValueError(f"centers must have shape (m, 2) with m >= 1, got {tuple(c.shape)}")
        m = c.shape[0]
        if h.shape != (m,) or w.shape != (m,):
            raise ValueError(
                f"heights and widths must have shape (m,) = ({m},), got {tuple(h.shape)} and {tuple(w.shape)}"
            )
        if not bool((w > 0).all()):
            raise ValueError(f"widths must be > 0, got {w.tolist()}")
        if t.shape != (2,):
            raise ValueError(f"tilt must have shape (2,), got {tuple(t.shape)}")
        self.centers = nn.Parameter(c)
        self.heights = nn.Parameter(h)
        self.log_widths = nn.Parameter(w.log())
        self.tilt = nn.Parameter(t)

    @property
    def widths(self) -> Tensor:
        """Bump standard deviations, shape ``(m,)``."""
        return self.log_widths.exp()

    def forward(self, x: Tensor) -> Tensor:
        """Values of the objective at ``x`` of shape ``(..., 2)``; returns shape ``(...)``."""
        if x.shape[-1:] != (2,):
            raise ValueError(f"x must have shape (..., 2), got {tuple(x.shape)}")
        d2 = (x.unsqueeze(-2) - self.centers).pow(2).sum(-1)  # (..., m)
        bumps = self.heights * torch.exp(-0.5 * d2 / self.widths.pow(2))
        return (x * self.tilt).sum(-1) - bumps.sum(-1)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo (the defaults are the full demo; :meth:`quick` gives tiny ones)."""

    steps: int = 150  # Adam steps of the DCEM training
    lr: float = 0.03
    target: tuple[float, float] = (-1.5, 1.0)
    bound: float = 3.0  # domain [-bound, bound]^2
    init_mu: tuple[float, float] = (0.0, 0.0)
    init_sigma: float = 1.5
    cem_samples: int = 60
    cem_elite: int = 10
    cem_iters: int = 6
    dcem_samples: int = 100
    dcem_elite: int = 10
    dcem_iters: int = 10
    dcem_batch: int = 16  # independent DCEM runs averaged in the loss
    temp: float = 1.0
    grid: int = 140  # contour resolution
    gif_frames: int = 24
    dpi: int = 110

    @classmethod
    def quick(cls) -> DemoConfig:
        """Tiny sizes for tests: a few seconds on a laptop CPU."""
        return cls(
            steps=10,
            lr=0.05,
            cem_samples=100,
            cem_elite=10,
            cem_iters=4,
            dcem_samples=30,
            dcem_elite=5,
            dcem_iters=5,
            dcem_batch=4,
            grid=40,
            gif_frames=3,
            dpi=50,
        )


@dataclass
class DemoResult:
    """What :func:`run` produced. Points are ``(x, y)`` tuples; distances are to ``target``."""

    out_dir: Path
    files: list[Path]
    losses: list[float]
    target: tuple[float, float]
    initial_minimiser: tuple[float, float]  # DCEM output (fixed evaluation noise) before training
    final_minimiser: tuple[float, float]  # the same after training
    initial_grid_minimiser: tuple[float, float]  # arg min of f on the plotting grid
    final_grid_minimiser: tuple[float, float]
    cem_solution: tuple[float, float]  # result of the vanilla CEM run of part 1
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def initial_distance(self) -> float:
        return math.dist(self.initial_minimiser, self.target)

    @property
    def final_distance(self) -> float:
        return math.dist(self.final_minimiser, self.target)


# --------------------------------------------------------------------------- computation


def _grid(cfg: DemoConfig, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Plotting grid: ``xs`` and ``ys`` of shape ``(R,)`` and points of shape ``(R, R, 2)``."""
    xs = torch.linspace(-cfg.bound, cfg.bound, cfg.grid, dtype=dtype)
    gx, gy = torch.meshgrid(xs, xs, indexing="xy")
    return xs, xs.clone(), torch.stack((gx, gy), -1)


@torch.no_grad()
def _surface(obj: BumpObjective, pts: Tensor) -> Tensor:
    return obj(pts)


def _grid_argmin(z: Tensor, pts: Tensor) -> tuple[float, float]:
    i = int(z.argmin())
    p = pts.reshape(-1, 2)[i]
    return float(p[0]), float(p[1])


def _solve(obj: BumpObjective, cfg: DemoConfig, generator: torch.Generator, n_batch: int) -> Tensor:
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


def _eval_runs(obj: BumpObjective, cfg: DemoConfig, seed: int) -> Tensor:
    """DCEM outputs of ``cfg.dcem_batch`` runs with fixed noise (the same before and after), ``(B, 2)``."""
    g = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        return _solve(obj, cfg, g, cfg.dcem_batch)


def _point(x: Tensor) -> tuple[float, float]:
    return float(x[0]), float(x[1])


@dataclass
class _CemTrace:
    X: list[Tensor] = field(default_factory=list)  # samples (n_sample, 2) per iteration
    elite: list[Tensor] = field(default_factory=list)  # bool (n_sample,)
    mu_before: list[Tensor] = field(default_factory=list)
    mu_after: list[Tensor] = field(default_factory=list)
    sigma_before: list[Tensor] = field(default_factory=list)  # (2,) std of the sampling distribution


def _run_cem(obj: BumpObjective, cfg: DemoConfig, seed: int) -> tuple[_CemTrace, Tensor]:
    trace = _CemTrace()
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


# --------------------------------------------------------------------------- plotting


def _mpl() -> Any:
    try:
        import matplotlib

        matplotlib.rcParams.update({"font.size": 9})
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the demo needs matplotlib: pip install 'dcem[demo]'") from err
    return Figure


def _levels(zmin: float, zmax: float, n: int = 24) -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=n).tick_values(zmin, zmax)


def _contour(ax: Any, xs: Tensor, ys: Tensor, z: Tensor, levels: Any) -> Any:
    cs = ax.contourf(xs.numpy(), ys.numpy(), z.numpy(), levels=levels, cmap="viridis", extend="both")
    ax.contour(xs.numpy(), ys.numpy(), z.numpy(), levels=levels[::3], colors="k", linewidths=0.3, alpha=0.4)
    ax.set_aspect("equal")
    return cs


def _plot_cem(
    path: Path, cfg: DemoConfig, xs: Tensor, ys: Tensor, z: Tensor, trace: _CemTrace, x_cem: Tensor
) -> None:
    from matplotlib.patches import Ellipse

    Figure = _mpl()
    n = len(trace.X)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(2.6 * ncol + 0.9, 2.6 * nrow + 0.6), layout="constrained")
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
    fig.savefig(path, dpi=cfg.dpi)


def _plot_loss(path: Path, cfg: DemoConfig, losses: Tensor) -> None:
    import numpy as np

    Figure = _mpl()
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.subplots()
    y = losses.numpy()
    steps = np.arange(1, len(y) + 1)
    ax.plot(steps, y, color="tab:blue", lw=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("Adam step")
    ax.set_ylabel(r"$\|\hat x(\theta) - x^\star\|^2$ (mean over runs)")
    ax.set_title(f"DCEM ($\\tau$ = {cfg.temp:g}) training loss, {cfg.dcem_batch} DCEM runs per step")
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=cfg.dpi)


def _mark(ax: Any, target: Sequence[float], runs: Tensor, grid_min: Sequence[float]) -> None:
    """Target, the DCEM outputs of the evaluation runs ``(B, 2)``, their mean and the grid minimum."""
    r = runs.numpy()
    ax.plot(*target, marker="*", ms=15, color="gold", mec="k", mew=0.8, ls="none", label="target $x^\\star$")
    ax.plot(r[:, 0], r[:, 1], marker=".", ms=4, color="salmon", ls="none", alpha=0.8, label="DCEM outputs")
    ax.plot(*r.mean(0), marker="o", ms=8, color="tab:red", mec="w", mew=1.2, ls="none", label="their mean")
    ax.plot(*grid_min, marker="P", ms=8, color="w", mec="k", mew=0.6, ls="none", label="arg min $f$ (grid)")


def _plot_surfaces(
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

    Figure = _mpl()
    fig = Figure(figsize=(9.6, 5.0), layout="constrained")
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
    fig.legend(handles, labels, loc="outside lower center", ncol=5, fontsize=8, frameon=False)
    fig.colorbar(cs, ax=axes, label="$f_\\theta(x)$", shrink=0.9)
    fig.suptitle(f"Learning the objective's parameters $\\theta$ through DCEM ($\\tau$ = {cfg.temp:g})")
    fig.savefig(path, dpi=cfg.dpi)


def _write_gif(
    path: Path,
    cfg: DemoConfig,
    xs: Tensor,
    ys: Tensor,
    frames: list[tuple[int, Tensor, Tensor, tuple[float, float]]],
    target: tuple[float, float],
) -> None:
    from matplotlib.animation import PillowWriter

    Figure = _mpl()
    zmin = min(float(z.min()) for _, z, _, _ in frames)
    zmax = max(float(z.max()) for _, z, _, _ in frames)
    levels = _levels(zmin, zmax)
    fig = Figure(figsize=(4.4, 4.2), layout="constrained")
    ax = fig.subplots()
    cs = _contour(ax, xs, ys, frames[0][1], levels)
    fig.colorbar(cs, ax=ax, label="$f_\\theta(x)$", shrink=0.85)
    _mark(ax, target, frames[0][2], frames[0][3])
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    ax.set_title("DCEM training")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    fig.draw_without_rendering()  # lay out once, then freeze: re-laying out every frame is slow
    fig.set_layout_engine("none")
    writer = PillowWriter(fps=6)
    with writer.saving(fig, str(path), dpi=min(cfg.dpi, 80)):
        for step, z, runs, gmin in frames:
            ax.clear()
            _contour(ax, xs, ys, z, levels)
            _mark(ax, target, runs, gmin)
            ax.set_xlim(-cfg.bound, cfg.bound)
            ax.set_ylim(-cfg.bound, cfg.bound)
            ax.set_xlabel("$x_1$")
            ax.set_ylabel("$x_2$")
            ax.set_title(f"DCEM ($\\tau$ = {cfg.temp:g}) training, Adam step {step}")
            writer.grab_frame()
        for _ in range(min(6, len(frames) // 4)):  # hold the last frame
            writer.grab_frame()


# --------------------------------------------------------------------------- driver


def _atomic_csv(path: Path, rows: list[tuple[int, float]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "loss"])
        w.writerows(rows)
    os.replace(tmp, path)


def run(
    out_dir: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    seed: int = 0,
    steps: int | None = None,
    gif: bool = True,
    quick: bool = False,
    progress: bool = True,
    config: DemoConfig | None = None,
) -> DemoResult:
    """Run the 2-D CEM / DCEM demo and write its figures into ``out_dir``.

    Args:
        out_dir: output folder (created if needed).
        seed: seed of the ``torch.Generator`` that draws every CEM/DCEM sample; the same seed
            gives the same numbers.
        steps: Adam steps of the DCEM training (default: that of the configuration).
        gif: also write ``dcem_training.gif``.
        quick: tiny sizes (for tests); ignored when ``config`` is given.
        progress: show a tqdm progress bar while training.
        config: explicit sizes (a :class:`DemoConfig`).

    Returns:
        a :class:`DemoResult` with the written files, the loss per step and the minimisers.

    Files: ``cem_iterates.png``, ``dcem_loss.png``, ``dcem_loss.csv``, ``dcem_surface.png`` and
    (unless ``gif=False``) ``dcem_training.gif``.
    """
    t_start = time.perf_counter()
    cfg = config if config is not None else (DemoConfig.quick() if quick else DemoConfig())
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        cfg = replace(cfg, steps=steps)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    try:
        from tqdm.auto import tqdm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the demo needs tqdm: pip install 'dcem[demo]'") from err
    _mpl()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float32
    obj = BumpObjective(dtype=dtype)
    centers0 = obj.centers.detach().clone()
    target_t = torch.tensor(cfg.target, dtype=dtype)
    xs, ys, pts = _grid(cfg, dtype)
    files: list[Path] = []

    # 1. vanilla CEM on the initial objective
    z0 = _surface(obj, pts)
    trace, x_cem = _run_cem(obj, cfg, seed)
    p = out / "cem_iterates.png"
    _plot_cem(p, cfg, xs, ys, z0, trace, x_cem)
    files.append(p)

    # 2. DCEM: learn the objective so that its DCEM minimiser moves to the target
    runs0 = _eval_runs(obj, cfg, seed)
    init_grid = _grid_argmin(z0, pts)
    n_frames = max(2, min(cfg.gif_frames, cfg.steps + 1)) if gif else 0
    frame_steps = (
        # denser early on, where the surface changes fastest
        {round(cfg.steps * (i / (n_frames - 1)) ** 2) for i in range(n_frames)} if n_frames else set()
    )
    frames: list[tuple[int, Tensor, Tensor, tuple[float, float]]] = []

    def snapshot(step: int) -> None:
        z = _surface(obj, pts)
        frames.append((step, z, _eval_runs(obj, cfg, seed), _grid_argmin(z, pts)))

    opt = torch.optim.Adam(obj.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed + 1)
    losses: list[Tensor] = []
    if 0 in frame_steps:
        snapshot(0)
    bar = tqdm(range(1, cfg.steps + 1), desc="DCEM training", unit="step", disable=not progress, leave=False)
    for step in bar:
        x = _solve(obj, cfg, gen, cfg.dcem_batch)
        loss = (x - target_t).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if step % 10 == 0 or step == cfg.steps:
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if step in frame_steps:
            snapshot(step)
    bar.close()
    loss_t = torch.stack(losses)
    loss_list = loss_t.tolist()

    z1 = _surface(obj, pts)
    runs1 = _eval_runs(obj, cfg, seed)
    res = DemoResult(
        out_dir=out,
        files=files,
        losses=loss_list,
        target=(float(cfg.target[0]), float(cfg.target[1])),
        initial_minimiser=_point(runs0.mean(0)),
        final_minimiser=_point(runs1.mean(0)),
        initial_grid_minimiser=init_grid,
        final_grid_minimiser=_grid_argmin(z1, pts),
        cem_solution=(float(x_cem[0]), float(x_cem[1])),
        seconds=0.0,
    )
    p = out / "dcem_loss.csv"
    _atomic_csv(p, list(enumerate(loss_list, start=1)))
    files.append(p)
    p = out / "dcem_loss.png"
    _plot_loss(p, cfg, loss_t)
    files.append(p)
    p = out / "dcem_surface.png"
    _plot_surfaces(p, cfg, xs, ys, z0, z1, runs0, runs1, centers0, obj.centers.detach(), res)
    files.append(p)
    if gif:
        p = out / "dcem_training.gif"
        _write_gif(p, cfg, xs, ys, frames, res.target)
        files.append(p)
    res.extra["parameters"] = {k: v.detach().tolist() for k, v in obj.named_parameters()}
    res.seconds = time.perf_counter() - t_start
    logger.info(
        "DCEM minimiser moved from (%.2f, %.2f) to (%.2f, %.2f); distance to target %.3f -> %.3f",
        *res.initial_minimiser,
        *res.final_minimiser,
        res.initial_distance,
        res.final_distance,
    )
    return res


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (the ``dcem demo`` sub-command)."""
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample generator (default: 0)")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"Adam steps of DCEM training (default: {DemoConfig.steps})"
    )
    parser.add_argument("--no-gif", action="store_true", help="do not write the animated GIF")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, a few seconds)")


def run_from_args(args: argparse.Namespace) -> DemoResult:
    """Run the demo from parsed command-line arguments and report the output folder on stdout."""
    if args.steps is not None and args.steps < 1:
        raise SystemExit(f"dcem demo: --steps must be >= 1, got {args.steps}")
    if args.seed < 0:
        raise SystemExit(f"dcem demo: --seed must be >= 0, got {args.seed}")
    # tiny tensors: extra threads only add overhead
    torch.set_num_threads(1)
    res = run(args.out, seed=args.seed, steps=args.steps, gif=not args.no_gif, quick=args.quick)
    lines = [
        f"CEM solution on the initial objective: ({res.cem_solution[0]:.3f}, {res.cem_solution[1]:.3f})",
        f"DCEM training: loss {res.losses[0]:.4f} -> {res.losses[-1]:.4f} in {len(res.losses)} steps; "
        f"minimiser ({res.initial_minimiser[0]:.2f}, {res.initial_minimiser[1]:.2f}) -> "
        f"({res.final_minimiser[0]:.2f}, {res.final_minimiser[1]:.2f}), "
        f"target ({res.target[0]:.2f}, {res.target[1]:.2f})",
        f"wrote {len(res.files)} files in {res.seconds:.1f} s to {res.out_dir.resolve()}",
        *(f"  {p.name}" for p in res.files),
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return res
