"""Pendulum swing-up with the receding-horizon CEM controller (``dcem-exp pendulum``).

A batch of pendulums (``dcem.control.PendulumDx``, torque in [-2, 2]) starts from random
angles and velocities; :class:`dcem.control.MPC` plans over ``horizon`` steps with the quadratic
tracking cost of ``mpc.pytorch`` (goal upright), applies the first action and warm-starts the
next plan with the shifted one. Writes ``trajectories.png`` (angle, velocity, torque),
``trajectories.pt``, ``summary.json`` and, if ``animate``, ``swingup.gif``.
"""

from __future__ import annotations

import json
import logging
import math
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


def plot_trajectories(x: torch.Tensor, u: torch.Tensor, dt: float, path: Path) -> None:
    """Angle (unwrapped, 0 = upright), angular velocity and torque per system over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    th = torch.atan2(x[..., 1], x[..., 0]).numpy()
    import numpy as np

    th = np.unwrap(th, axis=0)
    th = th - 2 * np.pi * np.round(th[-1] / (2 * np.pi))  # end near 0 when upright
    t = np.arange(x.shape[0]) * dt
    fig, axes = plt.subplots(3, 1, figsize=(6, 6), sharex=True)
    for b in range(x.shape[1]):
        axes[0].plot(t, th[:, b], lw=1)
        axes[1].plot(t, x[:, b, 2].numpy(), lw=1)
        axes[2].step(t[:-1], u[:, b, 0].numpy(), lw=1, where="post")
    axes[0].axhline(0.0, color="k", ls="--", lw=0.8)
    axes[0].set_ylabel("angle [rad] (0 = up)")
    axes[1].set_ylabel("angular vel. [rad/s]")
    axes[2].set_ylabel("torque")
    axes[2].set_xlabel("time [s]")
    fig.suptitle("pendulum swing-up with receding-horizon CEM", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def animate(x: torch.Tensor, dt: float, path: Path, n: int = 4, stride: int = 2) -> None:
    """GIF of the first ``n`` pendulums (needs pillow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter

    n = min(n, x.shape[1])
    fig, axes = plt.subplots(1, n, figsize=(2 * n, 2.2), squeeze=False)
    lines = []
    for ax in axes[0]:
        ax.set_xlim(-1.2, 1.2)
        ax.set_ylim(-1.2, 1.2)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        (ln,) = ax.plot([], [], "o-", lw=3, color="C0")
        lines.append(ln)
    frames = list(range(0, x.shape[0], stride))

    def draw(k: int):
        for b, ln in enumerate(lines):
            c, s = float(x[k, b, 0]), float(x[k, b, 1])
            ln.set_data([0.0, s], [0.0, c])
        axes[0][0].set_title(f"t = {k * dt:.2f} s", fontsize=8)
        return lines

    anim = FuncAnimation(fig, draw, frames=frames, blit=False)
    anim.save(path, writer=PillowWriter(fps=int(round(1 / (dt * stride)))))
    plt.close(fig)


def main(argv: list[str]) -> None:
    """Entry point of ``dcem-exp pendulum``."""
    from dcem.control import MPC, PendulumDx

    cfg = load_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(int(cfg.num_threads))
    run_dir = Path(cfg.out_dir) if cfg.out_dir else Path("runs/pendulum") / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    dx = PendulumDx()
    g = torch.Generator().manual_seed(int(cfg.seed))
    x0 = dx.sample_state(int(cfg.n_systems), g)
    ctrl = MPC(
        int(cfg.horizon),
        dx,
        n_sample=int(cfg.mpc.n_sample),
        n_elite=int(cfg.mpc.n_elite),
        n_iter=int(cfg.mpc.n_iter),
        temp=cfg.mpc.temp,
        sigma_scale=float(cfg.mpc.sigma_scale),
        shift_fill=str(cfg.mpc.shift_fill),
        generator=g,
    )
    t0 = time.perf_counter()
    out = ctrl.run(x0, int(cfg.n_steps), progress=bool(cfg.progress))
    wall = time.perf_counter() - t0
    torch.save(out, run_dir / "trajectories.pt")
    plot_trajectories(out["x"], out["u"], dx.dt, run_dir / "trajectories.png")
    if cfg.animate:
        try:
            animate(out["x"], dx.dt, run_dir / "swingup.gif", n=int(cfg.n_animate))
        except (ImportError, RuntimeError, ValueError) as err:  # pillow missing or writer failure
            log.warning("animation skipped: %s", err)
    tail = out["x"][-10:, :, 0]
    summary = {
        "n_systems": int(cfg.n_systems),
        "n_steps": int(cfg.n_steps),
        "frac_upright_last_10_steps": float((tail > math.cos(0.2)).all(0).float().mean()),
        "mean_step_cost": float(out["cost"].mean()),
        "wall_s": wall,
        "s_per_mpc_step": wall / int(cfg.n_steps),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("summary: %s", json.dumps(summary))
