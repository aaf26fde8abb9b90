"""Figures of the pendulum experiment: trajectories and the swing-up animation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dcem.experiments.common import plots

__all__ = ["animate", "plot_trajectories"]


def plot_trajectories(x: torch.Tensor, u: torch.Tensor, dt: float, path: Path) -> None:
    """Angle (unwrapped, 0 = upright), angular velocity and torque per system over time."""
    th = np.unwrap(torch.atan2(x[..., 1], x[..., 0]).numpy(), axis=0)
    th = th - 2 * np.pi * np.round(th[-1] / (2 * np.pi))  # end near 0 when upright
    t = np.arange(x.shape[0]) * dt
    with plots.style():
        fig = plots.figure(figsize=(6.4, 6.4), layout="constrained")
        axes = fig.subplots(3, 1, sharex=True)
        for b in range(x.shape[1]):
            axes[0].plot(t, th[:, b], lw=1)
            axes[1].plot(t, x[:, b, 2].numpy(), lw=1)
            axes[2].step(t[:-1], u[:, b, 0].numpy(), lw=1, where="post")
        axes[0].axhline(0.0, color="k", ls="--", lw=0.8)
        axes[0].set_ylabel("angle [rad] (0 = up)")
        axes[1].set_ylabel("angular vel. [rad/s]")
        axes[2].set_ylabel("torque")
        axes[2].set_xlabel("time [s]")
        fig.suptitle(f"pendulum swing-up with receding-horizon CEM ({x.shape[1]} systems)")
        plots.save(fig, path, dpi=90)


def animate(x: torch.Tensor, dt: float, path: Path, n: int = 4, stride: int = 2) -> None:
    """GIF of the first ``n`` pendulums (needs pillow)."""
    n = min(n, x.shape[1])
    frames = []
    with plots.style():
        fig = plots.figure(figsize=(2.2 * n, 2.5), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)[0]
        lines = []
        for ax in axes:
            ax.set_xlim(-1.2, 1.2)
            ax.set_ylim(-1.2, 1.2)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            (ln,) = ax.plot([], [], "o-", lw=3, color="C0")
            lines.append(ln)
        fig.draw_without_rendering()
        fig.set_layout_engine("none")  # lay out once, then keep it for every frame
        for k in range(0, x.shape[0], stride):
            for b, ln in enumerate(lines):
                ln.set_data([0.0, float(x[k, b, 1])], [0.0, float(x[k, b, 0])])
            axes[0].set_title(f"t = {k * dt:.2f} s")
            frames.append(plots.frame(fig, dpi=72))
    plots.write_gif(path, frames, fps=1 / (dt * stride))
